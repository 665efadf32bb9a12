import ShoalCore
import ShoalSys

/// A local folder as the capacity layer (the embedded default): bucket = sub-folder, key = path.
/// The etag is derived from size and modification time, so a rewritten file is a new version.
public final class FileStore: ObjectStore, @unchecked Sendable {
    public let name: String
    public let root: String

    public init(name: String, root: String) {
        self.name = name
        self.root = root.hasSuffix("/") && root.count > 1 ? String(root.dropLast()) : root
    }

    private func path(_ bucket: String, _ key: String?) throws(ShoalError) -> String {
        for part in [bucket] + (key.map { $0.split(separator: "/").map(String.init) } ?? []) where part == ".." || part == "." {
            throw ShoalError(.badRequest, "'\(part)' is not allowed in a bucket or key of a file store")
        }
        guard !bucket.contains("/") else { throw ShoalError(.badRequest, "bucket '\(bucket)' contains '/'") }
        return root + "/" + bucket + (key.map { "/" + $0 } ?? "")
    }

    static func etag(_ info: FileInfo) -> String { "\"\(String(info.size, radix: 16))-\(String(info.modifiedNanos, radix: 16))\"" }

    public func head(bucket: String, key: String) throws(ShoalError) -> ObjectVersion {
        guard let info = FileSystem.info(try path(bucket, key)), info.isRegular else {
            throw ShoalError(.notFound, "\(describe(bucket, key)) not found (no file under \(root))")
        }
        return ObjectVersion(size: info.size, etag: FileStore.etag(info))
    }

    public func get(bucket: String, key: String, offset: UInt64, length: Int, ifMatch: String?,
                    into buffer: UnsafeMutableRawPointer) throws(ShoalError) -> StoreRead {
        let p = try path(bucket, key)
        let before = try head(bucket: bucket, key: key)
        if let ifMatch, before.etag != ifMatch {
            throw ShoalError(.preconditionFailed, "\(describe(bucket, key)) changed (etag \(before.etag), expected \(ifMatch))")
        }
        let expected = offset < before.size ? Int(min(UInt64(length), before.size - offset)) : 0
        do {
            let h = try FileHandle.open(p, .readOnly)
            let n = expected == 0 ? 0 : try h.read(into: buffer, count: expected, at: offset)
            // A rewrite during the read shows as a new etag: never return a mix of versions.
            let after = try head(bucket: bucket, key: key)
            guard after.etag == before.etag, n == expected else {
                throw ShoalError(.preconditionFailed, "\(describe(bucket, key)) changed while being read")
            }
            return StoreRead(count: n, objectSize: before.size)
        } catch let e as ShoalError {
            throw e
        } catch {
            throw ShoalError(.storeUnavailable, "cannot read \(describe(bucket, key)): \(error)")
        }
    }

    public func list(bucket: String, prefix: String, continuation: String?) throws(ShoalError) -> ObjectListing {
        let base = try path(bucket, nil)
        guard FileSystem.isDirectory(base) else { throw ShoalError(.notFound, "bucket '\(bucket)' not found in store '\(name)'") }
        var entries: [ObjectEntry] = []
        var stack = [""]
        while let rel = stack.popLast() {
            for entry in FileSystem.list(rel.isEmpty ? base : base + "/" + rel) where !entry.hasPrefix(".shoal-tmp") {
                let key = rel.isEmpty ? entry : rel + "/" + entry
                guard let info = FileSystem.info(base + "/" + key) else { continue }
                if info.isDirectory {
                    if prefix.hasPrefix(key + "/") || (key + "/").hasPrefix(prefix) || prefix.isEmpty { stack.append(key) }
                } else if info.isRegular && key.hasPrefix(prefix) {
                    entries.append(ObjectEntry(key: key, version: ObjectVersion(size: info.size, etag: FileStore.etag(info))))
                }
            }
        }
        entries.sort { $0.key < $1.key }
        // Pages of 1000, as S3 gives them; the token is the last key of the page before.
        if let after = continuation { entries.removeAll { $0.key <= after } }
        guard entries.count > 1000 else { return ObjectListing(entries: entries, continuation: nil) }
        return ObjectListing(entries: Array(entries.prefix(1000)), continuation: entries[999].key)
    }

    public func put(bucket: String, key: String, bytes: [UInt8]) throws(ShoalError) {
        let p = try path(bucket, key)
        do {
            if let slash = p.lastIndex(of: "/") { try FileSystem.createDirectories(String(p[..<slash])) }
            let tmp = root + "/" + bucket + "/.shoal-tmp-\(try secureRandomBytes(6).hexString)"
            // An object in a file store is the user's data, readable as a file written there by hand would be.
            try FileSystem.writeFile(tmp, bytes, permissions: 0o644)
            try FileSystem.rename(tmp, p)
        } catch {
            throw ShoalError(.storeUnavailable, "cannot write \(describe(bucket, key)): \(error)")
        }
    }

    public func delete(bucket: String, key: String) throws(ShoalError) {
        FileSystem.remove(try path(bucket, key))
    }

    public func createBucket(_ bucket: String) throws(ShoalError) {
        do { try FileSystem.createDirectories(try path(bucket, nil)) } catch {
            throw ShoalError(.storeUnavailable, "cannot create bucket '\(bucket)' under \(root): \(error)")
        }
    }
}
