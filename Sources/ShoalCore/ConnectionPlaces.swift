/// Places for connections against a limit, shared by the data plane and the admin port. When all
/// are taken, a new connection takes the place of the oldest one not yet trusted (still in its
/// handshake, or still waiting for its request): anyone who can connect could otherwise hold every
/// place with connections that never authenticate. Only when all are trusted is it refused.
public struct ConnectionPlaces<Key: Hashable & Sendable>: Sendable {
    public enum Admission: Sendable, Equatable {
        /// Taken; the connection `displacing` (if any) lost its place and is to be closed.
        case admitted(displacing: Key?)
        case full
    }

    private struct Place: Sendable {
        /// Arrival order: the oldest untrusted connection is displaced first.
        let order: UInt64
        var trusted = false
    }

    public let limit: Int
    private var places: [Key: Place] = [:]
    private var arrivals: UInt64 = 0

    public init(limit: Int) { self.limit = max(1, limit) }

    /// Connections holding a place.
    public var count: Int { places.count }

    public var isFull: Bool { places.count >= limit }

    public mutating func admit(_ key: Key) -> Admission {
        var displaced: Key?
        if isFull {
            guard let oldest = places.filter({ !$0.value.trusted }).min(by: { $0.value.order < $1.value.order })?.key else { return .full }
            places[oldest] = nil
            displaced = oldest
        }
        arrivals += 1
        places[key] = Place(order: arrivals)
        return .admitted(displacing: displaced)
    }

    /// The connection proved itself (or its request arrived): it keeps its place from now on.
    public mutating func trust(_ key: Key) { places[key]?.trusted = true }

    /// The connection closed (nothing to do for one already displaced).
    public mutating func release(_ key: Key) { places[key] = nil }
}
