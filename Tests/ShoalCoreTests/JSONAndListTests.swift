import Testing
@testable import ShoalCore

@Suite struct JSONReaderTests {
    @Test func valuesComeOutAsSwiftTypes() throws {
        let v = try JSON.parse(#" {"a": [1, -2.5, 3e2, true, false, null], "s": "x\"\\\/\n\u00e9\ud83d\ude00", "big": 123456789012345678901234567890, "e": {}} "#)
        let o = try #require(v as? [String: Any])
        let a = try #require(o["a"] as? [Any])
        #expect(a[0] as? Int == 1 && a[1] as? Double == -2.5 && a[2] as? Double == 300)
        #expect(a[3] as? Bool == true && a[4] as? Bool == false && a[5] is JSON.Null)
        #expect(o["s"] as? String == "x\"\\/\né😀")
        #expect(o["big"] as? Double == 123456789012345678901234567890.0)  // too large for Int: a Double
        #expect((o["e"] as? [String: Any])?.isEmpty == true)
        #expect(try JSON.parse("\"0123\"") as? String == "0123")  // etcd's int64s are strings
    }

    @Test func badDocumentsAreErrorsWithTheirPlace() {
        for bad in ["", "{", "[1,]", "{\"a\" 1}", "01", "1.", "-", "tru", "\"\\ud800\"", "\"\\x\"", "\"a\u{1}\"", "[1] 2", "{\"a\":1,}",
                    String(repeating: "[", count: 100) + String(repeating: "]", count: 100)] {
            #expect(throws: JSON.SyntaxError.self, "\(bad)") { try JSON.parse(bad) }
        }
        // Bytes that are not UTF-8 inside a string come out replaced, never as a crash.
        #expect((try? JSON.parse([0x22, 0xff, 0x22])) as? String == "\u{FFFD}")
    }
}

@Suite struct ListCodecTests {
    @Test func requestAndReplyRoundTripAndRefuseBadInput() {
        let req = ListRequest(store: "default", bucket: "bkt", prefix: "train/", continuation: "token")
        #expect(ListRequest(decoding: req.encoded) == req)
        #expect(ListRequest(decoding: ListRequest(store: "default", bucket: "bkt", prefix: "").encoded)?.continuation == nil)
        #expect(ListRequest(decoding: Array(req.encoded.dropLast())) == nil)
        #expect(ListRequest(decoding: req.encoded + [0]) == nil)
        #expect(ListRequest(decoding: ListRequest(store: "default", bucket: "", prefix: "p").encoded) == nil)
        #expect(ListRequest(decoding: ListRequest(store: "default", bucket: "b", prefix: String(repeating: "k", count: 1025)).encoded) == nil)

        let listing = ObjectListing(entries: [ObjectEntry(key: "a", version: ObjectVersion(size: 1, etag: "\"e1\"")),
                                              ObjectEntry(key: "b/c", version: ObjectVersion(size: 1 << 40, etag: "\"e2\""))],
                                    continuation: "next")
        let bytes = ListReply.encode(listing)
        #expect(ListReply.decode(bytes) == listing)
        #expect(ListReply.decode(ListReply.encode(ObjectListing(entries: [], continuation: nil))) == ObjectListing(entries: [], continuation: nil))
        #expect(ListReply.decode(Array(bytes.dropLast())) == nil)
        var tooMany: [UInt8] = []
        tooMany.appendLE(UInt16(1001))
        #expect(ListReply.decode(tooMany) == nil)
    }
}
