import Testing
@testable import ShoalCore

@Suite struct WireCodecTests {
    let object = ObjectRef(store: "default", bucket: "bkt", key: "dir/file.bin")

    @Test func headerRoundTripsAndRejectsBadInput() {
        let h = FrameHeader(type: .read, status: .notFound, requestID: 42, payloadLength: 100)
        let bytes = h.bytes
        bytes.withUnsafeBytes { p in
            #expect(FrameHeader.decode(p.baseAddress!, maxPayload: 1000) == .success(h))
            #expect(FrameHeader.decode(p.baseAddress!, maxPayload: 99) == .failure(.tooLarge(100)))
        }
        var bad = bytes
        bad[0] ^= 0xff
        bad.withUnsafeBytes { #expect(FrameHeader.decode($0.baseAddress!, maxPayload: 1000) == .failure(.badMagic)) }
        var v1 = bytes
        v1[4] = 1
        v1.withUnsafeBytes { #expect(FrameHeader.decode($0.baseAddress!, maxPayload: 1000) == .failure(.unsupportedVersion(1))) }
    }

    @Test func messagesRoundTrip() {
        let stat = StatRequest(object: object, revalidate: true)
        #expect(StatRequest(decoding: stat.encoded) == stat)
        let reply = StatReply(version: ObjectVersion(size: 123, etag: "\"abc\""), blockSize: 4 << 20)
        #expect(StatReply(decoding: reply.encoded) == reply)
        let stale = StatReply(version: ObjectVersion(size: 123, etag: "\"abc\""), blockSize: 4 << 20, stale: true)
        #expect(StatReply(decoding: stale.encoded) == stale && StatReply(decoding: stale.encoded) != reply)
        let read = ReadRequest(block: BlockKey(object: object, etag: "\"e\"", objectSize: 10 << 20, blockSize: 1 << 20, index: 9),
                               offset: 5, length: 100)
        #expect(ReadRequest(decoding: read.encoded) == read)
        let hello = HelloMessage(nonce: Array(repeating: 3, count: 32), clientName: "t")
        #expect(HelloMessage(decoding: hello.encoded) == hello)
        let challenge = ChallengeMessage(version: 2, nonce: Array(repeating: 4, count: 32), proof: Array(repeating: 5, count: 32))
        #expect(ChallengeMessage(decoding: challenge.encoded) == challenge)
        #expect(HelloMessage(decoding: HelloMessage(nonce: [1, 2], clientName: "t").encoded) == nil)  // short nonce
    }

    /// A decoded READ keeps its key as bytes (inline up to `BlockKeyBytes.inlineCapacity`, in an
    /// array beyond) and its names decode back exactly; malformed UTF-8 in any name is refused.
    @Test(arguments: [10, 100, 1000]) func aDecodedReadKeepsItsKeyExactly(keyLength: Int) throws {
        let name = String(repeating: "k", count: keyLength - 1) + "é"
        let block = BlockKey(object: ObjectRef(store: "default", bucket: "bucket", key: name), etag: "\"0123456789abcdef\"",
                             objectSize: 9 << 20, blockSize: 4 << 20, index: 2)
        let sent = ReadRequest(block: block, offset: 7, length: 4096, epoch: 3)
        let got = try #require(ReadRequest(decoding: sent.encoded))
        #expect(got == sent && got.id == block.id && got.block == block)
        #expect(got.keyBytes.array == block.encoded && got.storeName == "default" && got.expectedLength == 1 << 20)
        #expect(got.withObjectBytes { Array($0) } == Array(block.encoded.prefix(6 + 7 + 6 + name.utf8.count)))
        try got.validate()
        // The last byte of the key's name, made a lone continuation byte.
        var bad = sent.encoded
        let at = 20 + 2 + 7 + 2 + 6 + 2 + name.utf8.count - 1
        #expect(bad[at] == 0xA9)
        bad[at - 1] = 0x41
        #expect(ReadRequest(decoding: bad) == nil, "a key that is not UTF-8")
    }

    /// A view round-trips through MEMBERS_REPLY exactly; cut, padded or with an unknown state it
    /// is refused. A READ that asks to fill and not to fill is malformed.
    @Test func membersReplyAndReadFlags() throws {
        let view = try MembershipView(epoch: 77, members: [Member(id: "a", address: "10.0.0.1:7070", weight: 1.5, state: .draining),
                                                          Member(id: "b", address: "[::1]:7070", weight: Double(4 << 30), state: .joining)])
        let bytes = MembersReply.encode(view)
        #expect(MembersReply.decode(bytes) == view)
        #expect(MembersReply.decode(Array(bytes.dropLast())) == nil)
        #expect(MembersReply.decode(bytes + [0]) == nil)
        var badState = bytes
        badState[badState.count - 2] = 9
        #expect(MembersReply.decode(badState) == nil)
        var badTransports = bytes
        badTransports[badTransports.count - 1] = 3
        #expect(MembersReply.decode(badTransports) == nil)
        // Transports: not said, TCP only, TCP and RDMA.
        let said = try MembershipView(epoch: 78, members: [Member(id: "a", address: "10.0.0.1:7070"), Member(id: "b", address: "10.0.0.2:7070", rdma: false),
                                                          Member(id: "c", address: "10.0.0.3:7070", rdma: true)])
        #expect(MembersReply.decode(MembersReply.encode(said))?.members.map(\.rdma) == [nil, false, true])
        // RDMA_CONNECT's queue pair and GID round-trip; any other length is not one.
        let qp = RDMAConnectMessage(queuePair: 0x0102_0304, gid: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 2, 15], psn: 0xABCDEF)
        #expect(RDMAConnectMessage(decoding: qp.encoded) == qp)
        var wide = qp.encoded
        wide[23] = 1
        #expect(RDMAConnectMessage(decoding: wide) == nil, "a sequence number is 24 bits")
        #expect(RDMAConnectMessage(decoding: Array(qp.encoded.dropLast())) == nil)
        #expect(RDMAConnectMessage(decoding: qp.encoded + [0]) == nil)
        let empty = try MembershipView(epoch: 0, members: [])
        #expect(MembersReply.decode(MembersReply.encode(empty)) == empty)
        let key = BlockKey(object: ObjectRef(store: "d", bucket: "b", key: "k"), etag: "e", objectSize: 1 << 20, blockSize: 1 << 20, index: 0)
        let both = ReadRequest(block: key, offset: 0, length: 1, flags: ReadRequest.fillOnlyFlag | ReadRequest.cachedOnlyFlag)
        #expect(throws: ShoalError.self) { try both.validate() }
        let cachedOnly = try #require(ReadRequest(decoding: ReadRequest(block: key, offset: 0, length: 1, flags: ReadRequest.cachedOnlyFlag).encoded))
        #expect(cachedOnly.isCachedOnly && !cachedOnly.isFillOnly)
        try cachedOnly.validate()
        // A hand-over push (bit 5) goes with fill-only and nothing else; bit 6 is no flag.
        let push = try #require(ReadRequest(decoding: ReadRequest(block: key, offset: 0, length: 0, flags: ReadRequest.fillOnlyFlag | ReadRequest.pushFlag).encoded))
        #expect(push.isPush && push.isFillOnly)
        try push.validate()
        #expect(throws: ShoalError.self) { try ReadRequest(block: key, offset: 0, length: 0, flags: ReadRequest.pushFlag).validate() }
        #expect(ReadRequest(decoding: ReadRequest(block: key, offset: 0, length: 0, flags: ReadRequest.fillOnlyFlag | 64).encoded) == nil)
    }

    /// A READ by name (flag bit 3): block 0 from byte 0, no etag, no other flag; and block 0 is
    /// placed with its object's metadata while other blocks go by their ID.
    @Test func readsByNameAndTheFirstBlocksPlacement() throws {
        let object = ObjectRef(store: "d", bucket: "b", key: "k")
        let byName = BlockKey(object: object, etag: "", objectSize: 1 << 20, blockSize: 1 << 20, index: 0)
        let ok = try #require(ReadRequest(decoding: ReadRequest(block: byName, offset: 0, length: 1 << 20, flags: ReadRequest.resolveFlag).encoded))
        #expect(ok.resolvesVersion)
        try ok.validate()
        let bad = [ReadRequest(block: byName, offset: 1, length: 10, flags: ReadRequest.resolveFlag),
                   ReadRequest(block: byName, offset: 0, length: 10, flags: ReadRequest.resolveFlag | ReadRequest.fillOnlyFlag),
                   ReadRequest(block: BlockKey(object: object, etag: "e", objectSize: 1 << 20, blockSize: 1 << 20, index: 0), offset: 0, length: 10,
                               flags: ReadRequest.resolveFlag),
                   ReadRequest(block: BlockKey(object: object, etag: "", objectSize: 2 << 20, blockSize: 1 << 20, index: 1), offset: 0, length: 10,
                               flags: ReadRequest.resolveFlag)]
        for r in bad { #expect(throws: ShoalError.self) { try r.validate() } }
        // Without a version, a READ is refused as before.
        #expect(throws: ShoalError.self) { try ReadRequest(block: byName, offset: 0, length: 10).validate() }

        let v1 = BlockKey(object: object, etag: "e1", objectSize: 3 << 20, blockSize: 1 << 20, index: 0)
        let v2 = BlockKey(object: object, etag: "e2", objectSize: 5 << 20, blockSize: 1 << 20, index: 0)
        #expect(v1.placementID == object.placementID && v2.placementID == object.placementID && v1.id != v2.id)
        let second = BlockKey(object: object, etag: "e1", objectSize: 3 << 20, blockSize: 1 << 20, index: 1)
        #expect(second.placementID == second.id)
        // The worker computes the same from the bytes it received.
        let decoded = try #require(ReadRequest(decoding: ReadRequest(block: v1, offset: 0, length: 1).encoded))
        #expect(decoded.placementID == object.placementID)
        let decodedSecond = try #require(ReadRequest(decoding: ReadRequest(block: second, offset: 0, length: 1).encoded))
        #expect(decodedSecond.placementID == second.id)
    }

    @Test func truncatedOrPaddedMessagesAreRejected() {
        let read = ReadRequest(block: BlockKey(object: object, etag: "e", objectSize: 1, blockSize: 1 << 20, index: 0), offset: 0, length: 1)
        let bytes = read.encoded
        for n in 0..<bytes.count { #expect(ReadRequest(decoding: Array(bytes.prefix(n))) == nil) }
        #expect(ReadRequest(decoding: bytes + [0]) == nil)
        #expect(StatRequest(decoding: []) == nil)
        #expect(StatRequest(decoding: [0, 0, 0, 0, 0, 0]) == nil)  // empty names
    }

    @Test func readValidationNamesTheProblem() throws {
        func req(_ size: UInt64, _ index: UInt64, _ off: UInt32, _ len: UInt32, bs: UInt32 = 1 << 20, etag: String = "e") -> ReadRequest {
            ReadRequest(block: BlockKey(object: object, etag: etag, objectSize: size, blockSize: bs, index: index), offset: off, length: len)
        }
        try req(3 << 20, 2, 0, 1 << 20).validate()
        #expect(throws: ShoalError.self) { try req(3 << 20, 2, 0, 1 << 20, etag: "").validate() }  // no version
        #expect(throws: ShoalError.self) { try req(3 << 20, 3, 0, 1).validate() }  // past the end
        #expect(throws: ShoalError.self) { try req((2 << 20) + 10, 2, 5, 6).validate() }  // beyond the short last block
        #expect(throws: ShoalError.self) { try req(1 << 20, 0, 0, 0).validate() }  // empty
        #expect(throws: ShoalError.self) { try req(1 << 20, 0, 0, 1, bs: 1000).validate() }  // odd block size
        // An etag goes into a header of the worker's request to its store: no line breaks.
        for etag in ["\"e\"\r\nX-Injected: 1", "\"e\"\n", "e\u{0}", "e\u{7F}"] {
            #expect(throws: ShoalError.self, "\(Array(etag.utf8))") { try req(1 << 20, 0, 0, 1, etag: etag).validate() }
        }
        try req(1 << 20, 0, 0, 1, etag: "W/\"e-1\"").validate()
        try req(1 << 20, 0, 0, 1, etag: "shoal-lm:Sun, 22 Nov 2026 03:09:00 GMT").validate()
    }

    /// A probe asks for an empty range with no other flag; anything else is a malformed READ.
    @Test func aProbeIsAnEmptyRangeWithNoOtherFlag() {
        let key = BlockKey(object: ObjectRef(store: "default", bucket: "b", key: "k"), etag: "\"e\"", objectSize: 3 << 20, blockSize: 1 << 20, index: 1)
        #expect((try? ReadRequest(block: key, offset: 0, length: 0, flags: ReadRequest.probeFlag).validate()) != nil)
        #expect(throws: ShoalError.self) { try ReadRequest(block: key, offset: 0, length: 1, flags: ReadRequest.probeFlag).validate() }
        #expect(throws: ShoalError.self) { try ReadRequest(block: key, offset: 4096, length: 0, flags: ReadRequest.probeFlag).validate() }
        #expect(throws: ShoalError.self) {
            try ReadRequest(block: key, offset: 0, length: 0, flags: ReadRequest.probeFlag | ReadRequest.fillOnlyFlag).validate()
        }
        // Through the codec: the flag survives, and a decoded probe is checked the same way.
        let probe = ReadRequest(block: key, offset: 0, length: 0, flags: ReadRequest.probeFlag)
        let decoded = ReadRequest(decoding: probe.encoded)
        #expect(decoded == probe && decoded?.isProbe == true)
    }

    @Test func aNoDataReplySaysWhereTheBlockCameFrom() {
        for origin in [BlockOrigin.cache, .store, .peer] {
            let r = NoDataReply(crc: 0xDEAD_BEEF, length: 4096, origin: origin)
            #expect(r.encoded.count == NoDataReply.size)
            #expect(r.encoded.withUnsafeBytes { NoDataReply(decoding: $0) } == r)
        }
        var unknown = NoDataReply(crc: 1, length: 2, origin: .cache).encoded
        unknown[8] = 7
        #expect(unknown.withUnsafeBytes { NoDataReply(decoding: $0) } == nil)
        #expect(Array(unknown.prefix(8)).withUnsafeBytes { NoDataReply(decoding: $0) } == nil, "the old 8-byte form")
    }
}

@Suite struct HostileInputTests {
    /// Random bytes and random field values never trap the decoders or the validation a worker runs.
    @Test func randomPayloadsNeverTrap() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<5_000 {
            let n = Int.random(in: 0..<200, using: &rng)
            let bytes = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
            if let r = ReadRequest(decoding: bytes) { _ = try? r.validate() }
            _ = StatRequest(decoding: bytes)
            _ = HelloMessage(decoding: bytes)
            _ = StatReply(decoding: bytes)
            _ = BlockKey(encoded: bytes)
        }
    }

    @Test func extremeBlockIndexesAreRejectedNotTrapped() {
        let object = ObjectRef(store: "d", bucket: "b", key: "k")
        for index in [UInt64.max, UInt64(1) << 63, UInt64(1) << 44] {
            let r = ReadRequest(block: BlockKey(object: object, etag: "e", objectSize: UInt64.max, blockSize: 4 << 20, index: index),
                                offset: 0, length: 1)
            if index > UInt64.max / (4 << 20) { #expect(throws: ShoalError.self) { try r.validate() } }
        }
        #expect(BlockLayout(blockSize: 0).blockCount(objectSize: 10) == 0)
        #expect(BlockLayout(blockSize: 0).pieces(offset: 0, length: 10).isEmpty)
        #expect(BlockLayout(blockSize: 10).pieces(offset: UInt64.max, length: 10).isEmpty)
    }
}
