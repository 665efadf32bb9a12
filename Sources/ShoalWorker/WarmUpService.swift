import ServiceLifecycle

/// The worker's warm-up side, a service of its own in the service group (beside
/// `WorkerService`): every minute it saves the hot prefixes (`shoal hot`, `shoal warm --hot`)
/// to the state folder so they outlive a restart; on graceful shutdown it closes the warm-up
/// queue first, so the warm fills still waiting behind foreground reads are answered
/// `shutting_down` at once (their warms go on with the blocks' next owners) instead of holding
/// the stop, and saves the hot prefixes once more.
///
/// Put it after `WorkerService` in the group: services shut down in reverse order, so the queue
/// closes before the worker drains.
public struct WarmUpService: Service {
    let worker: Worker
    let saveEveryNanos: UInt64

    public init(worker: Worker, saveEverySeconds: Double = 60) {
        self.worker = worker
        saveEveryNanos = UInt64(max(0.01, saveEverySeconds) * 1e9)
    }

    public func run() async throws {
        let every = saveEveryNanos
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            do { try await cancelWhenGracefulShutdown { try await Task.sleep(nanoseconds: every) } } catch { break }
            worker.saveHot()
        }
        worker.closeWarmUpQueue()
        worker.saveHot()
    }
}
