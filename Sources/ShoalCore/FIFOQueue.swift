/// Values waiting in arrival order: taking the first costs the same however many wait (the
/// array's front is skipped, and dropped once it is half of it), and a value may go back to the
/// front. The fill threads' job queues, a client's parts per worker, a connection's warm lane.
public struct FIFOQueue<Element> {
    private var items: [Element] = []
    private var head = 0

    public init() {}

    public var isEmpty: Bool { head == items.count }
    public var count: Int { items.count - head }
    public var first: Element? { isEmpty ? nil : items[head] }
    /// The values waiting, first to last.
    public var elements: ArraySlice<Element> { items[head...] }

    public mutating func append(_ value: Element) { items.append(value) }

    /// The first value, taken out.
    public mutating func take() -> Element? {
        guard head < items.count else { return nil }
        let value = items[head]
        head += 1
        if head == items.count {
            removeAll()
        } else if head >= 64 && head * 2 >= items.count {
            items.removeFirst(head)
            head = 0
        }
        return value
    }

    /// Back at the front: the next `take` returns it.
    public mutating func pushFront(_ value: Element) {
        if head > 0 {
            head -= 1
            items[head] = value
        } else {
            items.insert(value, at: 0)
        }
    }

    public mutating func removeAll(where drop: (Element) -> Bool) {
        items = items[head...].filter { !drop($0) }
        head = 0
    }

    public mutating func removeAll() {
        items.removeAll(keepingCapacity: true)
        head = 0
    }
}

extension FIFOQueue where Element: Equatable {
    public func contains(_ value: Element) -> Bool { elements.contains(value) }
}
