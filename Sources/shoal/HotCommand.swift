import ArgumentParser
import Foundation
import ShoalClient
import ShoalCore
import ShoalSys

struct HotCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hot",
        abstract: "The dataset prefixes read most over a window, with their sizes and what is cached (shoal warm --hot N warms the top N).",
        discussion: """
            Each worker counts reads per dataset prefix (a bucket's first path component) in hourly heavy-hitter \
            summaries kept across restarts, for a week; this merges the workers' counts (--admin or $SHOAL_ADMINS). \
            The size of each prefix comes from listing it through the cluster.
            """)

    @Option(help: "The window, e.g. 24h or 90m.") var since = "24h"
    @Option(help: "How many prefixes.") var limit = 20
    @Flag(help: "One JSON object per line.") var json = false
    @Option(name: .customLong("admin"), help: "A worker's admin host:port (repeat; default: $SHOAL_ADMINS).") var admins: [String] = []
    @OptionGroup var client: ClientOptions

    func run() throws {
        let rows = try HotQuery.hottest(admins: admins, since: since, limit: limit)
        let c = try? ShoalClient(config: try client.makeClientConfig())
        for r in rows {
            var size: UInt64?
            if let c, let p = try? ObjectPrefix.parse(r.prefix) {
                var total: UInt64 = 0
                if (try? c.forEachObject(store: p.store, bucket: p.bucket, prefix: p.prefix, { e throws(ShoalError) in
                    total += e.version.size
                    return true
                })) != nil { size = total }
            }
            let percent = size.map { $0 == 0 ? 100 : min(100, 100 * Double(r.bytesCached) / Double($0)) }
            if json {
                print("{\"prefix\":\(JSONText.quote(r.prefix)),\"reads\":\(r.reads),\"bytesRead\":\(r.bytesRead),\"size\":\(size.map { String($0) } ?? "null"),"
                      + "\"bytesCached\":\(r.bytesCached),\"cachedPercent\":\(percent.map { formatFixed($0, decimals: 1) } ?? "null")}")
            } else {
                print(pad(String(r.reads), 10) + pad(ByteSize.format(r.bytesRead), 12) + pad(size.map(ByteSize.format) ?? "?", 12)
                      + pad(ByteSize.format(r.bytesCached), 12) + pad(percent.map { formatFixed($0, decimals: 0) + "%" } ?? "?", 6) + "  " + r.prefix)
            }
        }
        if rows.isEmpty && !json { print("no reads in the last \(since)") }
    }

    func pad(_ s: String, _ n: Int) -> String { String(repeating: " ", count: max(0, n - s.count)) + s }
}

/// The hot prefixes, merged over the workers' admin ports.
enum HotQuery {
    struct Row {
        var prefix: String
        var reads: UInt64
        var bytesRead: UInt64
        var bytesCached: UInt64
    }

    static func hottest(admins: [String], since: String, limit: Int) throws -> [Row] {
        guard DurationText.parseSeconds(since).map({ $0 > 0 }) == true else { throw fail("--since '\(since)' is not a duration (e.g. 24h)", code: 2) }
        guard (1...1000).contains(limit) else { throw fail("the number of prefixes must be 1-1000, not \(limit)", code: 2) }
        var admin = AdminOptions()
        admin.admins = admins
        var merged: [String: Row] = [:]
        var answered = 0
        for e in try admin.endpoints() {
            do {
                let easy = try CurlEasy()
                let sink = HTTPBodySink(limit: 4 << 20)
                let r = try easy.perform(HTTPRequest(method: "GET", url: "http://\(e)/hot?since=\(PercentEncoding.encode(since))&limit=\(limit)"), sink: sink)
                guard r.status == 200, let doc = try JSONSerialization.jsonObject(with: Data(sink.bytes)) as? [String: Any],
                      let prefixes = doc["prefixes"] as? [[String: Any]] else {
                    note("shoal: warning: worker \(e): /hot answered HTTP \(r.status): \(sink.text)")
                    continue
                }
                answered += 1
                for p in prefixes {
                    guard let name = p["prefix"] as? String else { continue }
                    var row = merged[name] ?? Row(prefix: name, reads: 0, bytesRead: 0, bytesCached: 0)
                    row.reads += (p["reads"] as? NSNumber)?.uint64Value ?? 0
                    row.bytesRead += (p["bytesRead"] as? NSNumber)?.uint64Value ?? 0
                    row.bytesCached += (p["bytesCached"] as? NSNumber)?.uint64Value ?? 0
                    merged[name] = row
                }
            } catch {
                note("shoal: warning: worker \(e) admin port unreachable: \(error)")
            }
        }
        guard answered > 0 else { throw fail("no worker answered /hot") }
        return Array(merged.values.sorted { $0.reads > $1.reads || ($0.reads == $1.reads && $0.prefix < $1.prefix) }.prefix(limit))
    }
}
