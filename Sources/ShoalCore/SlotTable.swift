/// Values in numbered places, each place with a generation that changes whenever it is taken
/// again: an io completion names (place, generation) in its `user_data`, and one for a value
/// that is gone is recognised and dropped. Places are reused, so the table stays as large as
/// the most values held at once.
public struct SlotTable<Value> {
    private var values: [Value?] = []
    private var generations: [UInt32] = []
    private var free: [Int] = []

    public init() {}

    /// Takes a place for `make(place, generation)`'s value; returns the place.
    @discardableResult
    public mutating func insert(_ make: (Int, UInt32) -> Value) -> Int {
        let i: Int
        if let f = free.popLast() {
            i = f
        } else {
            i = values.count
            values.append(nil)
            generations.append(0)
        }
        generations[i] &+= 1
        values[i] = make(i, generations[i])
        return i
    }

    /// The value at `place` if it is still of `generation`.
    public func value(_ place: Int, _ generation: UInt32) -> Value? {
        guard place >= 0, place < values.count, generations[place] == generation else { return nil }
        return values[place]
    }

    public func generation(_ place: Int) -> UInt32 { generations[place] }

    /// The value at `place`, whatever its generation.
    public subscript(place: Int) -> Value? {
        get { values[place] }
        set { values[place] = newValue }
    }

    /// Frees `place`; its value, taken out.
    @discardableResult
    public mutating func remove(_ place: Int) -> Value? {
        guard let value = values[place].take() else { return nil }
        free.append(place)
        return value
    }

    public var isEmpty: Bool { free.count == values.count }

    /// Every value held.
    public var all: [Value] { values.compactMap { $0 } }
}
