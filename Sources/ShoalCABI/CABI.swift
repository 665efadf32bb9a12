#if canImport(Glibc)
import Glibc
#endif
import CShoalABI
import ShoalClient
import ShoalCore
import ShoalSys
import Synchronization

// libshoal's C ABI (include/shoal.h). Every entry point checks its arguments and turns every
// failure into a negative code and a per-thread message: nothing here may trap inside a
// training job.

/// A client as C holds it: its configuration, and the ShoalClient of the process using it, made
/// on first use in each process. A forked child makes its own (with its own connections) and
/// never touches its parent's: that one's locks may be held by a thread the child does not have,
/// so it is left alone, not freed.
final class CClient: @unchecked Sendable {
    let config: ClientConfig
    /// An unmanaged `ProcessClient`, or nil before first use.
    private let state = Atomic<UnsafeMutableRawPointer?>(nil)
    /// Set by `shoal_client_free`: files still open on it then fail instead of making a client.
    private let closed = Atomic<Bool>(false)

    final class ProcessClient {
        /// The process it was made in, as its fork generation (compared with no syscall).
        let process: Int
        let client: ShoalClient
        init(process: Int, client: ShoalClient) {
            self.process = process
            self.client = client
        }
    }

    init(config: ClientConfig) { self.config = config }

    deinit { release() }

    /// This process's client, made now if this process has none yet.
    func client() throws(ShoalError) -> ShoalClient {
        let generation = ForkGeneration.current
        while true {
            guard !closed.load(ordering: .acquiring) else { throw ShoalError(.badRequest, "the client was freed (shoal_client_free)") }
            let current = state.load(ordering: .acquiring)
            if let current {
                let pc = Unmanaged<ProcessClient>.fromOpaque(current).takeUnretainedValue()
                if pc.process == generation { return pc.client }
            }
            let made = Unmanaged.passRetained(ProcessClient(process: generation, client: try ShoalClient(config: config))).toOpaque()
            // The one a parent made stays allocated in the child (see above); another thread of
            // this process that got here first wins, and this one's client is dropped.
            if state.compareExchange(expected: current, desired: made, ordering: .acquiringAndReleasing).exchanged {
                return Unmanaged<ProcessClient>.fromOpaque(made).takeUnretainedValue().client
            }
            Unmanaged<ProcessClient>.fromOpaque(made).release()
        }
    }

    /// Frees this process's client (a parent's, in a child, is left alone). Calls running on it
    /// in other threads at the same time are the caller's error (as with free()); files opened on
    /// it fail from now on.
    func release() {
        closed.store(true, ordering: .releasing)
        guard let current = state.exchange(nil, ordering: .acquiringAndReleasing) else { return }
        let pc = Unmanaged<ProcessClient>.fromOpaque(current)
        if pc.takeUnretainedValue().process == ForkGeneration.current { pc.release() }
    }
}

/// An open file: the object's version and the client it reads through.
final class CFile {
    let owner: CClient
    let file: ShoalFile
    let etag: UnsafeMutablePointer<CChar>

    init(owner: CClient, file: ShoalFile) {
        self.owner = owner
        self.file = file
        etag = strdup(file.version.etag) ?? strdup("")!
    }

    deinit { free(etag) }
}

/// The calling thread's last error, kept in thread-specific storage.
final class ThreadError {
    var code: Int32 = 0
    var text: UnsafeMutablePointer<CChar> = strdup("")!

    static let key: pthread_key_t = {
        var key = pthread_key_t()
        _ = pthread_key_create(&key) { p in
            if let p { Unmanaged<ThreadError>.fromOpaque(p).release() }
        }
        return key
    }()

    static var current: ThreadError {
        if let p = pthread_getspecific(key) { return Unmanaged<ThreadError>.fromOpaque(p).takeUnretainedValue() }
        let e = ThreadError()
        _ = pthread_setspecific(key, Unmanaged.passRetained(e).toOpaque())
        return e
    }

    static func set(_ code: Int32, _ message: String) {
        let e = current
        e.code = code
        if let copy = strdup(message) {
            free(e.text)
            e.text = copy
        }
    }

    deinit { free(text) }
}

/// Records `error` as the thread's last and returns its code.
@discardableResult
func failed(_ error: ShoalError) -> Int32 {
    let code = -Int32(error.code.rawValue)
    ThreadError.set(code, error.message)
    return code
}

@discardableResult
func badArgument(_ message: String) -> Int32 { failed(ShoalError(.badRequest, message)) }

func string(_ p: UnsafePointer<CChar>?) -> String? {
    guard let p else { return nil }
    return String(decoding: UnsafeRawBufferPointer(start: p, count: strlen(p)), as: UTF8.self)
}

func cclient(_ p: OpaquePointer?) -> CClient? {
    guard let p else { return nil }
    return Unmanaged<CClient>.fromOpaque(UnsafeRawPointer(p)).takeUnretainedValue()
}

func cfile(_ p: OpaquePointer?) -> CFile? {
    guard let p else { return nil }
    return Unmanaged<CFile>.fromOpaque(UnsafeRawPointer(p)).takeUnretainedValue()
}

@_cdecl("shoal_abi_version")
public func shoal_abi_version() -> Int32 { 2 }

@_cdecl("shoal_last_error")
public func shoal_last_error() -> UnsafePointer<CChar> { UnsafePointer(ThreadError.current.text) }

@_cdecl("shoal_last_error_code")
public func shoal_last_error_code() -> Int32 { ThreadError.current.code }

@_cdecl("shoal_client_new")
public func shoal_client_new(_ text: UnsafePointer<CChar>?) -> OpaquePointer? {
    do throws(ShoalError) {
        let settings = try ClientSettings.parse(string(text) ?? "")
        let config = try ClientSettings.config(settings)
        let c = CClient(config: config)
        // Made now, so a configuration that cannot reach the cluster fails here, not on the
        // first read.
        _ = try c.client()
        ThreadError.set(0, "")
        return OpaquePointer(Unmanaged.passRetained(c).toOpaque())
    } catch {
        failed(error)
        return nil
    }
}

@_cdecl("shoal_client_free")
public func shoal_client_free(_ client: OpaquePointer?) {
    guard let client else { return }
    let c = Unmanaged<CClient>.fromOpaque(UnsafeRawPointer(client))
    c.takeUnretainedValue().release()
    c.release()
}

@_cdecl("shoal_stat_url")
public func shoal_stat_url(_ client: OpaquePointer?, _ url: UnsafePointer<CChar>?, _ out: UnsafeMutablePointer<shoal_stat>?) -> Int32 {
    guard let c = cclient(client), let url = string(url), let out else { return badArgument("shoal_stat_url: client, url and out must not be NULL") }
    do throws(ShoalError) {
        fill(out, try c.client().stat(try ObjectRef.parse(url)))
        return 0
    } catch {
        return failed(error)
    }
}

func fill(_ out: UnsafeMutablePointer<shoal_stat>, _ file: ShoalFile) {
    out.pointee.size = file.size
    out.pointee.block_size = file.blockSize
    out.pointee.stale = file.stale ? 1 : 0
    withUnsafeMutableBytes(of: &out.pointee.etag) { raw in
        let bytes = Array(file.version.etag.utf8.prefix(raw.count - 1))
        raw.copyBytes(from: bytes)
        raw[bytes.count] = 0
    }
}

@_cdecl("shoal_read_object")
public func shoal_read_object(_ client: OpaquePointer?, _ url: UnsafePointer<CChar>?, _ p: UnsafeMutableRawPointer?, _ length: Int,
                              _ out: UnsafeMutablePointer<shoal_stat>?) -> Int64 {
    guard let c = cclient(client), let url = string(url) else { return Int64(badArgument("shoal_read_object: client and url must not be NULL")) }
    do throws(ShoalError) {
        let (file, n) = try c.client().readObject(try ObjectRef.parse(url), into: try buffer(p, length))
        if let out { fill(out, file) }
        return Int64(n)
    } catch {
        return Int64(failed(error))
    }
}

@_cdecl("shoal_list")
public func shoal_list(_ client: OpaquePointer?, _ url: UnsafePointer<CChar>?,
                       _ each: (@convention(c) (UnsafeMutableRawPointer?, UnsafePointer<CChar>?, UInt64, UnsafePointer<CChar>?) -> Int32)?,
                       _ context: UnsafeMutableRawPointer?) -> Int64 {
    guard let c = cclient(client), let url = string(url), let each else { return Int64(badArgument("shoal_list: client, url and callback must not be NULL")) }
    do throws(ShoalError) {
        let prefix = try ObjectPrefix.parse(url)
        var count: Int64 = 0
        try c.client().forEachObject(store: prefix.store, bucket: prefix.bucket, prefix: prefix.prefix) { e throws(ShoalError) in
            count += 1
            return e.key.withCString { k in e.version.etag.withCString { t in each(context, k, e.version.size, t) } } == 0
        }
        return count
    } catch {
        return Int64(failed(error))
    }
}

@_cdecl("shoal_manifest_list")
public func shoal_manifest_list(_ path: UnsafePointer<CChar>?,
                                _ each: (@convention(c) (UnsafeMutableRawPointer?, UnsafePointer<CChar>?, UInt64, UnsafePointer<CChar>?) -> Int32)?,
                                _ context: UnsafeMutableRawPointer?) -> Int64 {
    guard let path = string(path), let each else { return Int64(badArgument("shoal_manifest_list: path and callback must not be NULL")) }
    do throws(ShoalError) {
        let m = try Manifest.read(path)
        var count: Int64 = 0
        for o in m.objects {
            count += 1
            if o.url.withCString({ u in o.etag.withCString { t in each(context, u, o.size, t) } }) != 0 { break }
        }
        return count
    } catch {
        return Int64(failed(error))
    }
}

func open(_ client: OpaquePointer?, _ url: UnsafePointer<CChar>?, _ how: (ShoalClient, ObjectRef) throws(ShoalError) -> ShoalFile) -> OpaquePointer? {
    guard let c = cclient(client), let url = string(url) else {
        badArgument("shoal_open: client and url must not be NULL")
        return nil
    }
    do throws(ShoalError) {
        let file = try how(try c.client(), try ObjectRef.parse(url))
        return OpaquePointer(Unmanaged.passRetained(CFile(owner: c, file: file)).toOpaque())
    } catch {
        failed(error)
        return nil
    }
}

@_cdecl("shoal_open")
public func shoal_open(_ client: OpaquePointer?, _ url: UnsafePointer<CChar>?) -> OpaquePointer? {
    open(client, url) { (c, ref) throws(ShoalError) in try c.open(ref) }
}

@_cdecl("shoal_open_version")
public func shoal_open_version(_ client: OpaquePointer?, _ url: UnsafePointer<CChar>?, _ size: UInt64, _ etag: UnsafePointer<CChar>?) -> OpaquePointer? {
    guard let etag = string(etag) else {
        badArgument("shoal_open_version: etag must not be NULL")
        return nil
    }
    return open(client, url) { (c, ref) throws(ShoalError) in try c.open(ref, version: ObjectVersion(size: size, etag: etag)) }
}

@_cdecl("shoal_file_size")
public func shoal_file_size(_ file: OpaquePointer?) -> UInt64 { cfile(file)?.file.size ?? 0 }

@_cdecl("shoal_file_etag")
public func shoal_file_etag(_ file: OpaquePointer?) -> UnsafePointer<CChar>? { cfile(file).map { UnsafePointer($0.etag) } }

@_cdecl("shoal_close")
public func shoal_close(_ file: OpaquePointer?) {
    guard let file else { return }
    Unmanaged<CFile>.fromOpaque(UnsafeRawPointer(file)).release()
}

/// A caller's buffer, or why it cannot be one.
func buffer(_ p: UnsafeMutableRawPointer?, _ length: Int) throws(ShoalError) -> UnsafeMutableRawBufferPointer {
    guard length >= 0, length <= Int(Int64.max / 2) else { throw ShoalError(.badRequest, "a read length of \(length) bytes is not possible") }
    guard length == 0 || p != nil else { throw ShoalError(.badRequest, "the buffer is NULL") }
    return UnsafeMutableRawBufferPointer(start: p, count: length)
}

@_cdecl("shoal_pread")
public func shoal_pread(_ file: OpaquePointer?, _ p: UnsafeMutableRawPointer?, _ length: Int, _ offset: UInt64) -> Int64 {
    guard let f = cfile(file) else { return Int64(badArgument("shoal_pread: file must not be NULL")) }
    do throws(ShoalError) {
        return Int64(try f.owner.client().read(f.file, at: offset, into: try buffer(p, length)))
    } catch {
        return Int64(failed(error))
    }
}

@_cdecl("shoal_pread_version")
public func shoal_pread_version(_ client: OpaquePointer?, _ url: UnsafePointer<CChar>?, _ size: UInt64, _ etag: UnsafePointer<CChar>?,
                                _ p: UnsafeMutableRawPointer?, _ length: Int, _ offset: UInt64) -> Int64 {
    guard let c = cclient(client), let url = string(url), let etag = string(etag) else {
        return Int64(badArgument("shoal_pread_version: client, url and etag must not be NULL"))
    }
    do throws(ShoalError) {
        let client = try c.client()
        let file = try client.open(try ObjectRef.parse(url), version: ObjectVersion(size: size, etag: etag))
        return Int64(try client.read(file, at: offset, into: try buffer(p, length)))
    } catch {
        return Int64(failed(error))
    }
}

@_cdecl("shoal_pread_batch")
public func shoal_pread_batch(_ ops: UnsafeMutablePointer<shoal_read_op>?, _ count: Int) -> Int64 {
    guard count >= 0 else { return Int64(badArgument("shoal_pread_batch: a count of \(count)")) }
    guard count > 0 else { return 0 }
    guard let ops else { return Int64(badArgument("shoal_pread_batch: ops must not be NULL")) }
    var ranges: [ShoalClient.ReadRange] = []
    var owner: CClient?
    var failures: Int64 = 0
    var slots: [Int] = []
    for i in 0..<count {
        guard let f = cfile(ops[i].file) else {
            ops[i].result = Int64(badArgument("shoal_pread_batch: op \(i) has no file"))
            failures += 1
            continue
        }
        if owner == nil { owner = f.owner }
        guard owner === f.owner else {
            ops[i].result = Int64(badArgument("shoal_pread_batch: op \(i)'s file is of another client than op 0's"))
            failures += 1
            continue
        }
        do throws(ShoalError) {
            ranges.append(ShoalClient.ReadRange(file: f.file, offset: ops[i].offset, buffer: try buffer(ops[i].buffer, ops[i].length)))
            slots.append(i)
        } catch {
            ops[i].result = Int64(failed(error))
            failures += 1
        }
    }
    guard let owner, !ranges.isEmpty else { return failures }
    do throws(ShoalError) {
        try owner.client().read(&ranges)
    } catch {
        for i in slots { ops[i].result = Int64(failed(error)) }
        return Int64(failed(error))
    }
    for (k, i) in slots.enumerated() {
        switch ranges[k].result {
        case .success(let n): ops[i].result = Int64(n)
        case .failure(let e):
            ops[i].result = Int64(failed(e))
            failures += 1
        }
    }
    return failures
}
