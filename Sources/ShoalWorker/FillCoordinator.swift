import ShoalCore
import ShoalSys

/// Single flight per block: the first reader of a missing block fills it; readers that arrive
/// meanwhile wait for that one fill and share its outcome (an error reaches every waiter).
final class FillCoordinator: @unchecked Sendable {
    private final class Flight {
        var done = false
        var error: ShoalError?
    }

    private let lock = ConditionLock()
    private var flights: [BlockID: Flight] = [:]

    enum Role {
        /// Do the fill, then call `finish`.
        case leader
        /// Another reader filled it (or failed: the error).
        case followed(ShoalError?)
    }

    /// Either makes the caller the block's filler or waits for the filler already at work.
    func join(_ id: BlockID, timeoutNanos: UInt64 = 120_000_000_000) -> Role {
        lock.lock()
        defer { lock.unlock() }
        guard let flight = flights[id] else {
            flights[id] = Flight()
            return .leader
        }
        let deadline = monotonicNanos() + timeoutNanos
        while !flight.done {
            if !lock.wait(untilNanos: deadline) && !flight.done {
                return .followed(ShoalError(.timeout, "timed out waiting for another reader's fill of block \(id)"))
            }
        }
        return .followed(flight.error)
    }

    func finish(_ id: BlockID, error: ShoalError?) {
        lock.withLock {
            guard let flight = flights.removeValue(forKey: id) else { return }
            flight.done = true
            flight.error = error
        }
        lock.broadcast()
    }

    var inFlight: Int { lock.withLock { flights.count } }
}
