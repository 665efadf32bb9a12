#if canImport(Glibc)
import Glibc
#endif
internal import CShoalCurl

/// One HTTP transfer run by a `CurlMultiLoop`: its request, where its body goes, and what to
/// call as bytes arrive and when it ends. The callbacks run on the loop's thread, one at a time.
public final class CurlTransfer: @unchecked Sendable {
    public let request: HTTPRequest
    public let sink: HTTPBodySink
    /// Called after body bytes arrived (`sink.count` grew), with the response's status and
    /// headers; false aborts the transfer (its `done` then gets an error).
    let progress: (CurlTransfer) -> Bool
    let done: (Result<HTTPResponse, CurlError>) -> Void
    fileprivate var easy: CurlEasy?
    fileprivate var prepared: CurlEasy.Transfer?
    fileprivate var reported = 0

    public init(request: HTTPRequest, sink: HTTPBodySink, progress: @escaping (CurlTransfer) -> Bool,
                done: @escaping (Result<HTTPResponse, CurlError>) -> Void) {
        self.request = request
        self.sink = sink
        self.progress = progress
        self.done = done
    }

    /// The response as far as it has come: its status and headers (lower-cased names).
    public var response: HTTPResponse {
        HTTPResponse(status: prepared?.context.status ?? 0, headers: prepared?.context.headers ?? [:])
    }
}

/// A thread that runs many HTTP transfers at once on one libcurl multi handle, so that fills
/// from a store hold no thread each: transfers are added from any thread (`add`), at most
/// `maxTransfers` run at once (the rest wait their turn, in order), connections are kept alive
/// between them, and each transfer reports its bytes as they arrive.
public final class CurlMultiLoop: @unchecked Sendable {
    private let multi: UnsafeMutableRawPointer
    private let lock = ConditionLock()
    private var incoming: [CurlTransfer] = []
    private var stopping = false
    private var stopped = false
    private let maxTransfers: Int
    // The loop thread's own state.
    private var waiting: [CurlTransfer] = []
    private var waitingHead = 0
    private var active: [UnsafeMutableRawPointer: CurlTransfer] = [:]
    private var idle: [CurlEasy] = []

    public init(name: String, maxTransfers: Int) throws(SysError) {
        if let why = CurlEasy.unavailable { throw SysError(why, errno: ENOSYS) }
        guard let m = shoal_curl_multi_init() else { throw SysError("curl_multi_init", errno: ENOMEM) }
        multi = m
        self.maxTransfers = max(1, maxTransfers)
        try OSThread.spawn(name: name) { [self] in run() }
    }

    deinit { shoal_curl_multi_cleanup(multi) }

    /// Starts `transfer` when a place is free; its callbacks follow on the loop's thread.
    public func add(_ transfer: CurlTransfer) {
        let accepted = lock.withLock { () -> Bool in
            guard !stopping else { return false }
            incoming.append(transfer)
            return true
        }
        guard accepted else {
            transfer.done(.failure(CurlError(code: -1, message: "the worker is stopping")))
            return
        }
        shoal_curl_multi_wakeup(multi)
    }

    /// Ends every transfer (each `done` gets an error) and stops the thread; waits for it.
    public func stop() {
        lock.withLock { stopping = true }
        shoal_curl_multi_wakeup(multi)
        lock.lock()
        while !stopped { _ = lock.wait() }
        lock.unlock()
    }

    private func run() {
        while true {
            let (new, stop) = lock.withLock { () -> ([CurlTransfer], Bool) in
                defer { incoming.removeAll(keepingCapacity: true) }
                return (incoming, stopping)
            }
            if stop {
                let ending = Array(active.values) + waiting[waitingHead...]
                for t in active.values { shoal_curl_multi_remove_handle(multi, t.easy!.handle) }
                active.removeAll()
                waiting.removeAll()
                for t in ending + new { t.done(.failure(CurlError(code: -1, message: "the worker is stopping"))) }
                lock.withLock { stopped = true }
                lock.broadcast()
                return
            }
            waiting += new
            while active.count < maxTransfers, waitingHead < waiting.count {
                start(waiting[waitingHead])
                waitingHead += 1
            }
            if waitingHead == waiting.count {
                waiting.removeAll(keepingCapacity: true)
                waitingHead = 0
            }
            var running: Int32 = 0
            _ = shoal_curl_multi_perform(multi, &running)
            // Bytes that came: reported before ends, so a consumer sees them in order.
            for (handle, t) in active where t.sink.count > t.reported {
                t.reported = t.sink.count
                if !t.progress(t) { end(handle, t, CURLE_ABORTED_BY_CALLBACK) }
            }
            var left: Int32 = 0
            while let message = shoal_curl_multi_info_read(multi, &left) {
                guard message.pointee.msg == CURLMSG_DONE, let handle = message.pointee.easy_handle,
                      let t = active[handle] else { continue }
                end(handle, t, message.pointee.data.result)
            }
            // Until a socket is ready, curl's own next timeout, or `add` wakes it.
            var ready: Int32 = 0
            _ = shoal_curl_multi_poll(multi, nil, 0, 1000, &ready)
        }
    }

    private func start(_ t: CurlTransfer) {
        let easy: CurlEasy
        if let e = idle.popLast() {
            easy = e
        } else {
            do { easy = try CurlEasy() } catch {
                t.done(.failure(error))
                return
            }
        }
        t.easy = easy
        t.prepared = easy.prepare(t.request, sink: t.sink)
        guard shoal_curl_multi_add_handle(multi, easy.handle) == CURLM_OK else {
            idle.append(easy)
            t.done(.failure(CurlError(code: -1, message: "curl_multi_add_handle failed")))
            return
        }
        active[easy.handle] = t
    }

    private func end(_ handle: UnsafeMutableRawPointer, _ t: CurlTransfer, _ code: CURLcode) {
        shoal_curl_multi_remove_handle(multi, handle)
        active[handle] = nil
        let easy = t.easy!
        let result = Result { () throws(CurlError) -> HTTPResponse in try easy.finish(t.prepared!, code) }
        t.prepared = nil
        t.easy = nil
        idle.append(easy)
        t.done(result)
    }
}
