import ShoalCore
import ShoalSys

/// Single flight per block: the first reader of a missing block fills it; readers that arrive
/// meanwhile wait for that one fill and share its outcome (an error reaches every waiter).
///
/// Once the filler has the block's bytes (checked against the store's answer) it publishes them,
/// and waiting readers copy them into their own buffers at once. They used to wait until the
/// filler's reply had been sent and the block cached: a filler whose client did not read its
/// reply (stopped, or malicious) held every other reader of that block, each with an I/O buffer,
/// for as long as the send was allowed to take, and their clients gave up first.
final class FillCoordinator: @unchecked Sendable {
    private final class Flight {
        var done = false
        var error: ShoalError?
        /// The filler's bytes (in its I/O buffer), their length and CRC32C, once fetched.
        var bytes: (UnsafeRawPointer, Int, UInt32)?
        /// Readers copying `bytes` now: the filler's buffer is not given back until they are done.
        var copying = 0
    }

    private let lock = ConditionLock()
    private var flights: [BlockID: Flight] = [:]

    enum Role {
        /// Do the fill, `publish` its bytes, then call `finish`.
        case leader
        /// The filler's bytes were copied (by `copy`): their length and CRC32C.
        case copied(length: Int, crc: UInt32)
        /// Another reader filled it (or failed: the error).
        case followed(ShoalError?)
    }

    /// Either makes the caller the block's filler or waits for the filler already at work; when
    /// that one publishes its bytes, `copy` is given them (length and CRC32C beside) to copy out
    /// before it returns.
    func join(_ id: BlockID, timeoutNanos: UInt64 = 120_000_000_000,
              copy: (UnsafeRawPointer, Int, UInt32) -> Void = { _, _, _ in }) -> Role {
        lock.lock()
        guard let flight = flights[id] else {
            flights[id] = Flight()
            lock.unlock()
            return .leader
        }
        let deadline = monotonicNanos() + timeoutNanos
        while !flight.done && flight.bytes == nil {
            if !lock.wait(untilNanos: deadline) && !flight.done && flight.bytes == nil {
                lock.unlock()
                return .followed(ShoalError(.timeout, "timed out waiting for another reader's fill of block \(id)"))
            }
        }
        if let (pointer, length, crc) = flight.bytes {
            flight.copying += 1
            lock.unlock()
            copy(pointer, length, crc)
            lock.lock()
            flight.copying -= 1
            lock.unlock()
            lock.broadcast()
            return .copied(length: length, crc: crc)
        }
        let error = flight.error
        lock.unlock()
        return .followed(error)
    }

    /// The filler has the block's bytes at `pointer` (valid until it calls `finish`).
    func publish(_ id: BlockID, _ pointer: UnsafeRawPointer, length: Int, crc: UInt32) {
        lock.withLock { flights[id]?.bytes = (pointer, length, crc) }
        lock.broadcast()
    }

    /// Ends the flight; returns once no reader is still copying the published bytes, so the
    /// filler may give its buffer back.
    func finish(_ id: BlockID, error: ShoalError?) {
        lock.lock()
        guard let flight = flights.removeValue(forKey: id) else {
            lock.unlock()
            return
        }
        flight.done = true
        flight.error = error
        lock.broadcast()
        while flight.copying > 0 { _ = lock.wait() }
        flight.bytes = nil
        lock.unlock()
        lock.broadcast()
    }

    var inFlight: Int { lock.withLock { flights.count } }
}
