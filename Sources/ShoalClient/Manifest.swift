import ShoalCore
import ShoalSys

/// A dataset manifest: the versions a warm cached (`shoal warm --manifest FILE`), so a job can
/// read exactly those, with no STAT per object, and `shoal warm --manifest FILE --diff` can say
/// what changed in the store since. JSON lines (docs/MANIFEST.md): a header
/// `{"shoalManifest":1,"created":"...","prefixes":["s3://..."],"objects":N,"bytes":N}`, then one
/// `{"url":"s3://bucket/key","size":N,"etag":"..."}` per object.
public struct Manifest: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        public var url: String
        public var size: UInt64
        public var etag: String

        public init(url: String, size: UInt64, etag: String) {
            self.url = url
            self.size = size
            self.etag = etag
        }
    }

    public var prefixes: [ObjectPrefix]
    public var objects: [Entry]

    public init(prefixes: [ObjectPrefix], objects: [Entry]) {
        self.prefixes = prefixes
        self.objects = objects
    }

    public var bytes: UInt64 { objects.reduce(0) { $0 + $1.size } }

    /// Each object of the manifest opened at its version: no STAT, and every read of it pinned
    /// to that version (a changed object fails with `precondition_failed`, never mixes).
    public func open(with client: ShoalClient) throws(ShoalError) -> [ShoalFile] {
        var files: [ShoalFile] = []
        files.reserveCapacity(objects.count)
        for o in objects {
            files.append(try client.open(try ObjectRef.parse(o.url), version: ObjectVersion(size: o.size, etag: o.etag)))
        }
        return files
    }

    /// The manifest's text; `created` is a timestamp for people (ISO 8601).
    public func encoded(created: String) -> String {
        let q = JSONText.quote
        var lines = ["{\"shoalManifest\":1,\"created\":\(q(created)),\"prefixes\":[\(prefixes.map { q($0.description) }.joined(separator: ","))],"
            + "\"objects\":\(objects.count),\"bytes\":\(bytes)}"]
        for o in objects { lines.append("{\"url\":\(q(o.url)),\"size\":\(o.size),\"etag\":\(q(o.etag))}") }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Writes the manifest to `path` whole or not at all (a temporary file renamed over it).
    public func write(to path: String, created: String) throws {
        let temporary = path + ".tmp"
        try FileSystem.writeFile(temporary, Array(encoded(created: created).utf8), permissions: 0o644)
        try FileSystem.rename(temporary, path)
    }

    /// Reads a manifest; the error names the file and the line that is wrong.
    public static func read(_ path: String) throws(ShoalError) -> Manifest {
        let bytes: [UInt8]
        do { bytes = try FileSystem.readFile(path) } catch { throw ShoalError(.notFound, "cannot read the manifest \(path): \(error)") }
        return try parse(bytes, name: path)
    }

    public static func parse(_ bytes: [UInt8], name: String) throws(ShoalError) -> Manifest {
        let lines = bytes.split(separator: 0x0A, omittingEmptySubsequences: true)
        guard let first = lines.first, let header = try? JSON.parse(Array(first)) as? [String: Any],
              header["shoalManifest"] as? Int == 1, let listed = header["prefixes"] as? [Any]
        else {
            throw ShoalError(.badRequest, "\(name) is not a Shoal manifest (its first line is not {\"shoalManifest\":1,...})")
        }
        var prefixes: [ObjectPrefix] = []
        for p in listed {
            guard let text = p as? String else { throw ShoalError(.badRequest, "\(name): a prefix of the header is not a string") }
            do { prefixes.append(try ObjectPrefix.parse(text)) } catch { throw ShoalError(.badRequest, "\(name): \(error.message)") }
        }
        var objects: [Entry] = []
        for (n, line) in lines.dropFirst().enumerated() {
            guard let o = try? JSON.parse(Array(line)) as? [String: Any], let url = o["url"] as? String,
                  let size = o["size"] as? Int, size >= 0, let etag = o["etag"] as? String, !etag.isEmpty
            else {
                throw ShoalError(.badRequest, "\(name) line \(n + 2) is not {\"url\":\"s3://...\",\"size\":N,\"etag\":\"...\"}")
            }
            do { _ = try ObjectRef.parse(url) } catch { throw ShoalError(.badRequest, "\(name) line \(n + 2): \(error.message)") }
            objects.append(Entry(url: url, size: UInt64(size), etag: etag))
        }
        return Manifest(prefixes: prefixes, objects: objects)
    }
}
