#if canImport(Glibc)
import Glibc
#endif
internal import CShoalShims

/// An open file descriptor that closes itself.
public final class FileHandle: @unchecked Sendable {
    public let fd: Int32
    public let path: String

    init(fd: Int32, path: String) {
        self.fd = fd
        self.path = path
    }

    deinit { close(fd) }

    public struct Options: OptionSet, Sendable {
        public let rawValue: Int
        public init(rawValue: Int) { self.rawValue = rawValue }
        public static let create = Options(rawValue: 1)
        public static let direct = Options(rawValue: 2)
        public static let readOnly = Options(rawValue: 4)
        public static let truncate = Options(rawValue: 8)
        /// With `.create`: fail (EEXIST) if the path exists, a symbolic link included.
        public static let exclusive = Options(rawValue: 16)
    }

    /// Opens `path`; `.direct` asks for O_DIRECT (the filesystem must support it). A file it
    /// creates gets `permissions` (owner only by default: cache files and secrets hold data in the clear).
    public static func open(_ path: String, _ options: Options = [], permissions: UInt32 = 0o600) throws(SysError) -> FileHandle {
        var flags = options.contains(.readOnly) ? O_RDONLY : O_RDWR
        flags |= O_CLOEXEC
        if options.contains(.create) { flags |= O_CREAT }
        if options.contains(.truncate) { flags |= O_TRUNC }
        if options.contains(.exclusive) { flags |= O_EXCL }
        if options.contains(.direct) { flags |= shoal_o_direct() }
        let fd = try retryingEINTR("open \(path)") { Glibc.open(path, flags, mode_t(permissions)) }
        return FileHandle(fd: fd, path: path)
    }

    public func size() throws(SysError) -> UInt64 {
        var st = stat()
        _ = try retryingEINTR("fstat \(path)") { fstat(fd, &st) }
        if (st.st_mode & S_IFMT) == S_IFBLK {
            var bytes: UInt64 = 0
            _ = try retryingEINTR("ioctl BLKGETSIZE64 \(path)") { ioctl(fd, 0x8008_1272, &bytes) }
            return bytes
        }
        return UInt64(st.st_size)
    }

    /// Reserves `length` bytes on disk so later writes cannot fail for space.
    public func allocate(length: UInt64) throws(SysError) {
        let rc = posix_fallocate(fd, 0, off_t(length))
        if rc != 0 { throw SysError("fallocate \(path) to \(length) bytes", errno: rc) }
    }

    public func truncate(length: UInt64) throws(SysError) {
        _ = try retryingEINTR("ftruncate \(path)") { ftruncate(fd, off_t(length)) }
    }

    /// Reads up to `count` bytes at `offset` (a short read only at end of file).
    public func read(into buffer: UnsafeMutableRawPointer, count: Int, at offset: UInt64) throws(SysError) -> Int {
        var done = 0
        while done < count {
            let n = try retryingEINTR("pread \(path)") { pread(fd, buffer + done, count - done, off_t(offset) + off_t(done)) }
            if n == 0 { break }
            done += n
        }
        return done
    }

    public func write(_ buffer: UnsafeRawPointer, count: Int, at offset: UInt64) throws(SysError) {
        var done = 0
        while done < count {
            let n = try retryingEINTR("pwrite \(path)") { pwrite(fd, buffer + done, count - done, off_t(offset) + off_t(done)) }
            done += n
        }
    }

    public func sync() throws(SysError) {
        _ = try retryingEINTR("fdatasync \(path)") { fdatasync(fd) }
    }

    /// Sets the file's permission bits (e.g. 0o600).
    public func setPermissions(_ mode: UInt32) throws(SysError) {
        _ = try retryingEINTR("fchmod \(path)") { fchmod(fd, mode_t(mode)) }
    }
}

/// Filesystem queries and small file operations.
public enum FileSystem {
    public static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    public static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    public static func isBlockDevice(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFBLK
    }

    public static func isWritable(_ path: String) -> Bool { access(path, W_OK) == 0 }

    /// Creates `path` and its parents; folders it creates get `permissions`.
    public static func createDirectories(_ path: String, permissions: UInt32 = 0o755) throws(SysError) {
        var current = path.hasPrefix("/") ? "" : "."
        for part in path.split(separator: "/") {
            current += "/" + part
            if mkdir(current, mode_t(permissions)) != 0 {
                let e = currentErrno()
                if e != EEXIST { throw SysError("mkdir \(current)", errno: e) }
            }
        }
    }

    /// Bytes free to unprivileged users and total bytes of the filesystem holding `path`.
    public static func space(_ path: String) throws(SysError) -> (free: UInt64, total: UInt64) {
        var st = statvfs()
        _ = try retryingEINTR("statvfs \(path)") { statvfs(path, &st) }
        return (UInt64(st.f_bavail) * UInt64(st.f_frsize), UInt64(st.f_blocks) * UInt64(st.f_frsize))
    }

    /// The device a path lives on (to tell whether a cache folder shares the root filesystem).
    public static func deviceID(_ path: String) throws(SysError) -> UInt64 {
        var st = stat()
        _ = try retryingEINTR("stat \(path)") { stat(path, &st) }
        return UInt64(st.st_dev)
    }

    /// A whole file; one the kernel makes as it is read (/proc, which says size 0) too.
    public static func readFile(_ path: String) throws -> [UInt8] {
        let h = try FileHandle.open(path, .readOnly)
        var out = [UInt8](repeating: 0, count: max(4096, Int(try h.size()) + 1))
        var n = 0
        while true {
            if n == out.count { out.append(contentsOf: repeatElement(0, count: out.count)) }
            let got = try out.withUnsafeMutableBytes { try h.read(into: $0.baseAddress! + n, count: $0.count - n, at: UInt64(n)) }
            if got == 0 { break }
            n += got
        }
        return Array(out.prefix(n))
    }

    /// Writes a whole file; a new file is readable by its owner only unless `permissions` say otherwise.
    /// With `sync`, the data is on the disk when it returns.
    public static func writeFile(_ path: String, _ bytes: [UInt8], permissions: UInt32 = 0o600, sync: Bool = false) throws {
        let h = try FileHandle.open(path, [.create, .truncate], permissions: permissions)
        if !bytes.isEmpty { try bytes.withUnsafeBytes { try h.write($0.baseAddress!, count: $0.count, at: 0) } }
        if sync { try h.sync() }
    }

    /// Replaces a whole file so that a crash leaves the old one or the new one, never a torn
    /// one: writes `path.tmp`, syncs it, renames it over `path`, and syncs the folder.
    public static func replaceFile(_ path: String, _ bytes: [UInt8], permissions: UInt32 = 0o600) throws {
        let temporary = path + ".tmp"
        try writeFile(temporary, bytes, permissions: permissions, sync: true)
        try rename(temporary, path)
        let folder = path.lastIndex(of: "/").map { String(path[..<$0]) } ?? "."
        let fd = Glibc.open(folder.isEmpty ? "/" : folder, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd >= 0 {
            _ = fsync(fd)
            Glibc.close(fd)
        }
    }

    public static func remove(_ path: String) { unlink(path) }

    /// Sets a path's permission bits (e.g. 0o700 for a folder only its owner may enter).
    public static func setPermissions(_ path: String, _ mode: UInt32) throws(SysError) {
        _ = try retryingEINTR("chmod \(path)") { chmod(path, mode_t(mode)) }
    }

    public static func rename(_ from: String, _ to: String) throws(SysError) {
        _ = try retryingEINTR("rename \(from)") { Glibc.rename(from, to) }
    }

    /// File names in a directory (no "." or "..").
    public static func list(_ path: String) -> [String] {
        guard let dir = opendir(path) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }
}

/// What `FileSystem.info` reports of a path.
public struct FileInfo: Sendable {
    public var size: UInt64
    public var modifiedNanos: UInt64
    public var isDirectory: Bool
    public var isRegular: Bool
    /// The permission bits (e.g. 0o600).
    public var permissions: UInt32
    /// The owner's user ID.
    public var owner: UInt32
}

extension FileSystem {
    /// Size, modification time and kind of a path; nil if it does not exist.
    public static func info(_ path: String) -> FileInfo? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        // A file dated before 1970 (or far ahead) counts as time 0 rather than trapping.
        let seconds = UInt64(clamping: st.st_mtim.tv_sec)
        let mtime = seconds > UInt64.max / 2_000_000_000 ? 0 : seconds * 1_000_000_000 + UInt64(clamping: st.st_mtim.tv_nsec)
        let kind = st.st_mode & S_IFMT
        return FileInfo(size: UInt64(st.st_size), modifiedNanos: mtime, isDirectory: kind == S_IFDIR, isRegular: kind == S_IFREG,
                        permissions: UInt32(st.st_mode) & 0o7777, owner: UInt32(st.st_uid))
    }

    /// The user ID this process acts as (whose files it may trust).
    public static var effectiveUserID: UInt32 { UInt32(geteuid()) }
}

/// Writes to standard output or error without buffering; false if the reader went away (EPIPE).
/// This process's I/O counters.
public enum ProcessIO {
    /// Bytes this process has read with read-like calls, sockets included (`rchar` of
    /// /proc/self/io); nil where the kernel does not keep it.
    public static func bytesRead() -> UInt64? {
        guard let bytes = try? FileSystem.readFile("/proc/self/io") else { return nil }
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") where line.hasPrefix("rchar:") {
            return UInt64(line.dropFirst(6).trimmingPrefix(" "))
        }
        return nil
    }
}

public enum StandardStreams {
    public static func write(fd: Int32, _ buffer: UnsafeRawPointer, count: Int) -> Bool {
        var done = 0
        while done < count {
            let n = Glibc.write(fd, buffer + done, count - done)
            if n > 0 { done += n; continue }
            if n < 0 && currentErrno() == EINTR { continue }
            return false
        }
        return true
    }

    /// Ignore SIGPIPE so a closed pipe shows as EPIPE, not a killed process.
    public static func ignoreSIGPIPE() { signal(SIGPIPE, SIG_IGN) }

    public static var stdoutIsTerminal: Bool { isatty(1) == 1 }
    public static var stderrIsTerminal: Bool { isatty(2) == 1 }
}
