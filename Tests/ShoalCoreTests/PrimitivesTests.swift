import Foundation
import Testing
@testable import ShoalCore

@Suite struct ChecksumAndHashTests {
    @Test func crc32cKnownVectors() {
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        #expect(CRC32C.checksum([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
        #expect(CRC32C.checksum([]) == 0)
    }

    @Test func crc32cChainsAndMatchesAcrossLengths() {
        let data = SampleData.bytes(seed: 7, count: 100_003)
        let whole = CRC32C.checksum(data)
        for split in [0, 1, 7, 64, 4095, 50_000, 100_003] {
            let a = data[..<split].withUnsafeBytes { CRC32C.checksum($0) }
            let b = data[split...].withUnsafeBytes { CRC32C.checksum($0, continuing: a) }
            #expect(b == whole, "split at \(split)")
        }
    }

    /// Against a bit-at-a-time reference, over lengths and alignments that take the three-stream
    /// path (three 4 KiB stripes at a time) and its tail, so a wrong join of the streams shows.
    @Test func crc32cMatchesABitwiseReference() {
        func reference(_ bytes: ArraySlice<UInt8>) -> UInt32 {
            var c: UInt32 = 0xFFFF_FFFF
            for b in bytes {
                c ^= UInt32(b)
                for _ in 0..<8 { c = c & 1 == 1 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
            }
            return ~c
        }
        let data = SampleData.bytes(seed: 11, count: 40_000)
        // The three streams (12 KiB and up), and VPCLMULQDQ folding's steps (512 bytes and up,
        // 256 a step, then a tail of the crc32 instruction).
        let cases = [(0, 12_288), (3, 12_288), (0, 12_289), (5, 24_581), (1, 36_863), (7, 39_993), (0, 100),
                     (0, 511), (1, 512), (2, 513), (0, 767), (3, 768), (0, 769), (5, 1023), (0, 1024), (9, 1025), (0, 4095), (1, 102_400 / 4)]
        for (start, count) in cases {
            let slice = data[start..<(start + count)]
            let want = reference(slice)
            #expect(slice.withUnsafeBytes { CRC32C.checksum($0) } == want, "offset \(start), \(count) bytes")
            #expect(slice.withUnsafeBytes { CRC32C.unfolded($0) } == want, "offset \(start), \(count) bytes, without folding")
            // Continuing from a value: it goes into the folded path's first bytes.
            let cut = count / 3
            let first = data[start..<(start + cut)].withUnsafeBytes { CRC32C.checksum($0) }
            #expect(data[(start + cut)..<(start + count)].withUnsafeBytes { CRC32C.checksum($0, continuing: first) } == want,
                    "offset \(start), \(count) bytes, continued after \(cut)")
        }
    }

    /// The folded and the unfolded paths on random lengths, offsets and starting values.
    @Test(.enabled(if: CRC32C.foldsWithVPCLMULQDQ, "this CPU has no VPCLMULQDQ with AVX-512: there is no folded path"))
    func crc32cFoldedEqualsUnfolded() {
        let data = SampleData.bytes(seed: 12, count: 70_000)
        var random = SystemRandomNumberGenerator()
        data.withUnsafeBytes { d in
            for _ in 0..<2000 {
                let start = Int.random(in: 0..<64, using: &random)
                let count = Bool.random(using: &random) ? Int.random(in: 0...6000, using: &random) : Int.random(in: 0...(data.count - start), using: &random)
                let piece = UnsafeRawBufferPointer(rebasing: d[start..<(start + count)])
                let from = UInt32.random(in: 0...UInt32.max, using: &random)
                #expect(CRC32C.checksum(piece, continuing: from) == CRC32C.unfolded(piece, continuing: from), "offset \(start), \(piece.count) bytes")
            }
        }
    }

    @Test func sha256Vectors() {
        #expect(SHA256.hash(Array("abc".utf8)).hexString == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(SHA256.hash([]).hexString == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        let long = Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)
        #expect(SHA256.hash(long).hexString == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
    }

    @Test func hmacRFC4231() {
        let key = [UInt8](repeating: 0x0b, count: 20)
        #expect(hmacSHA256(key: key, message: Array("Hi There".utf8)).hexString
                == "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")
        let longKey = [UInt8](repeating: 0xaa, count: 131)
        #expect(hmacSHA256(key: longKey, message: Array("Test Using Larger Than Block-Size Key - Hash Key First".utf8)).hexString
                == "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")
    }

    @Test func constantTimeCompare() {
        #expect(constantTimeEqual([1, 2, 3], [1, 2, 3]))
        #expect(!constantTimeEqual([1, 2, 3], [1, 2, 4]))
        #expect(!constantTimeEqual([1, 2], [1, 2, 3]))
    }
}

@Suite struct UnitsTests {
    @Test func parsesSizes() {
        #expect(ByteSize.parse("4MiB") == 4 << 20)
        #expect(ByteSize.parse("4 MiB") == 4 << 20)
        #expect(ByteSize.parse("1.5GiB") == 3 << 29)
        #expect(ByteSize.parse("100") == 100)
        #expect(ByteSize.parse("2k") == 2048)
        #expect(ByteSize.parse("1GB") == 1_000_000_000)
        #expect(ByteSize.parse("12XB") == nil)
        #expect(ByteSize.parse("") == nil)
        #expect(ByteSize.parse("-1") == nil)
        #expect(ByteSize.parse("0.3B") == nil)
    }

    @Test func formatsSizes() {
        #expect(ByteSize.format(17) == "17 B")
        #expect(ByteSize.format(4 << 20) == "4 MiB")
        #expect(ByteSize.format(1536 << 20) == "1.50 GiB")
    }

    @Test func parsesDurations() {
        #expect(DurationText.parseSeconds("60s") == 60)
        #expect(DurationText.parseSeconds("500ms") == 0.5)
        #expect(DurationText.parseSeconds("2m") == 120)
        #expect(DurationText.parseSeconds("0") == 0)
        #expect(DurationText.parseSeconds("soon") == nil)
    }

    @Test func rangesResolveAndClip() throws {
        func r(_ t: String, _ size: UInt64) -> [UInt64] {
            guard let (o, l) = ByteRangeSpec.parse(t)?.resolve(size: size) else { return [] }
            return [o, l]
        }
        #expect(r("0-99", 1000) == [0, 100])
        #expect(r("900-", 1000) == [900, 100])
        #expect(r("-10", 1000) == [990, 10])
        #expect(r("1KiB+1KiB", 1500) == [1024, 476])
        #expect(r("0-1MiB", 10) == [0, 10])
        #expect(ByteRangeSpec.parse("5000-")?.resolve(size: 1000).length == 0)
        #expect(ByteRangeSpec.parse("10-5") == nil)
        // Past the end: an error naming the size, not an empty answer.
        #expect(performing: { try ByteRangeSpec.parse("5000-")!.resolveWithinObject(size: 1000) },
                throws: { ($0 as? ShoalError)?.message.contains("1000 bytes") == true })
        #expect(throws: ShoalError.self) { try ByteRangeSpec.parse("1000+1")!.resolveWithinObject(size: 1000) }
        #expect(try ByteRangeSpec.parse("999-")!.resolveWithinObject(size: 1000) == (999, 1))
        #expect(try ByteRangeSpec.parse("-5000")!.resolveWithinObject(size: 1000) == (0, 1000))
        #expect(try ByteRangeSpec.parse("0-")!.resolveWithinObject(size: 0) == (0, 0))
        #expect(ByteRangeSpec.parse("abc") == nil)
    }
}

@Suite struct ObjectModelTests {
    /// A dataset is the bucket and the key's first path component.
    @Test func datasetOfAnObject() {
        #expect(ObjectRef(store: "default", bucket: "b", key: "imagenet/train/0.jpg").dataset == "s3://b/imagenet/")
        #expect(ObjectRef(store: "aws", bucket: "b", key: "é/x").dataset == "s3://aws@b/é/")
        #expect(ObjectRef(store: "default", bucket: "b", key: "top.bin").dataset == "s3://b/")
        #expect(ObjectRef(store: "default", bucket: "b", key: "/lead").dataset == "s3://b//")
        #expect(ObjectRef(store: "default", bucket: "b", key: "a/b").datasetTag == ObjectRef.tag(ofDataset: "s3://b/a/"))
    }

    @Test func parsesURLs() throws {
        let r = try ObjectRef.parse("s3://bucket/a/b.bin")
        #expect(r == ObjectRef(store: "default", bucket: "bucket", key: "a/b.bin"))
        let s = try ObjectRef.parse("s3://aws@bucket/k")
        #expect(s.store == "aws" && s.description == "s3://aws@bucket/k")
        #expect(throws: ShoalError.self) { try ObjectRef.parse("http://x/y") }
        #expect(throws: ShoalError.self) { try ObjectRef.parse("s3://bucket") }
        #expect(throws: ShoalError.self) { try ObjectRef.parse("s3://bucket/") }
        #expect(throws: ShoalError.self) { try ObjectRef.parse("s3://b/" + String(repeating: "k", count: 2000)) }
    }

    /// MurmurHash3 x64-128 (seed 0), against the reference implementation's outputs, every tail length.
    @Test func blockHashMatchesMurmur3() {
        let vectors: [([UInt8], String)] = [
            ([], "00000000000000000000000000000000"),
            (Array("a".utf8), "897859f6655555855a890e51483ab5e6"),
            (Array("hello".utf8), "029bbd41b3a7d8cb191dae486a901e5b"),
            (Array("0123456789abcdef".utf8), "a7d14acf946de04bda08a7635c5bc387"),
            (Array("0123456789abcdefX".utf8), "f7d670b5acd2ebcd274b10829711728f"),
            (Array(0..<20), "4b9536577053d2a37a9c7b6c25061f5a"),
            (Array(0..<100), "ca5140c199996fb0990734c8936dbd0f"),
        ]
        for (input, hex) in vectors {
            let (h1, h2) = input.withUnsafeBytes { BlockHash.hash($0) }
            var bytes: [UInt8] = []
            bytes.appendLE(h1)
            bytes.appendLE(h2)
            #expect(bytes.hexString == hex, "\(input.count) bytes")
        }
    }

    @Test func blockKeyRoundTripsAndIdentityIncludesVersion() {
        let k = BlockKey(object: ObjectRef(store: "s", bucket: "b", key: "k"), etag: "\"e1\"", objectSize: 20 << 20, blockSize: 4 << 20, index: 3)
        #expect(BlockKey(encoded: k.encoded) == k)
        #expect(k.encoded.count == k.encodedCount && k.id == BlockID(hashing: k.encoded))
        #expect(k.expectedLength == 4 << 20)
        var other = k
        other.etag = "\"e2\""
        #expect(other.id != k.id)
        // The size is part of the version: a block of the same etag but another size is another block.
        other = k
        other.objectSize = (12 << 20) + 4096
        #expect(other.id != k.id && other.expectedLength == 4096)
        other = k
        other.index = 4
        #expect(other.id != k.id)
        #expect(BlockKey(encoded: Array(k.encoded.dropLast())) == nil)
    }

    @Test func layoutCutsRangesIntoBlockPieces() {
        let layout = BlockLayout(blockSize: 100)
        #expect(layout.blockCount(objectSize: 0) == 0)
        #expect(layout.blockCount(objectSize: 100) == 1)
        #expect(layout.blockCount(objectSize: 101) == 2)
        #expect(layout.blockLength(index: 1, objectSize: 150) == 50)
        let pieces = layout.pieces(offset: 50, length: 200)
        #expect(pieces.map(\.index) == [0, 1, 2])
        #expect(pieces.map(\.length) == [50, 100, 50])
        #expect(pieces.map(\.offsetInRange) == [0, 50, 150])
        #expect(pieces.map(\.offsetInBlock) == [50, 0, 0])
    }
}

@Suite struct PlacementTests {
    static func view(_ n: Int, weight: (Int) -> Double = { _ in 1 }, epoch: UInt64 = 1) throws -> MembershipView {
        try MembershipView(epoch: epoch, members: (0..<n).map { Member(id: "w\($0)", address: "10.0.0.\($0):7070", weight: weight($0)) })
    }

    @Test func spreadsEvenlyAndMovesOnlyTheLeaversSlots() throws {
        let before = Placement(view: try PlacementTests.view(10))
        let mean = Double(Placement.slotCount) / 10
        #expect(Double(before.slotCounts.max()!) / mean < 1.02, "\(before.slotCounts)")
        // Drain w3 (weight 0): only its slots move, each to its old rank-2 member.
        let w3 = try #require(before.view.index(of: "w3"))
        let after = Placement(view: try PlacementTests.view(10, weight: { $0 == 3 ? 0 : 1 }, epoch: 2))
        #expect(after.slotCounts[w3] == 0)
        var moved = 0
        for s in 0..<Placement.slotCount {
            if before.owner(slot: s) == w3 {
                #expect(after.owner(slot: s) == before.fallback(slot: s))
                moved += 1
            } else if after.owner(slot: s) != before.owner(slot: s) {
                Issue.record("slot \(s) moved from a member that stayed")
                return
            }
        }
        #expect(moved == before.slotCounts[w3])
    }

    @Test func aJoinerTakesItsShareFromEveryone() throws {
        let before = Placement(view: try PlacementTests.view(10))
        let after = Placement(view: try PlacementTests.view(11, epoch: 2))
        let joiner = try #require(after.view.index(of: "w10"))
        var moved = 0
        for s in 0..<Placement.slotCount where after.owner(slot: s) != before.owner(slot: s).map({ i in after.view.index(of: before.view.members[i].id)! }) {
            #expect(after.owner(slot: s) == joiner, "a slot moved between members that stayed")
            moved += 1
        }
        let share = Double(moved) / Double(Placement.slotCount)
        #expect(abs(share - 1.0 / 11) < 0.05 / 11, "moved \(share), ideal \(1.0 / 11)")
    }

    @Test func weightsShiftLoadAndStatesDecideWhoOwns() throws {
        let t = Placement(view: try MembershipView(epoch: 1, members: [Member(id: "a", address: "a:1", weight: 1),
                                                                       Member(id: "b", address: "b:1", weight: 3)]))
        #expect(abs(t.share(of: 1) - 0.75) < 0.01, "\(t.share(of: 1))")
        let states = Placement(view: try MembershipView(epoch: 2, members: [Member(id: "a", address: "a:1", state: .joining),
                                                                            Member(id: "b", address: "b:1", state: .draining),
                                                                            Member(id: "c", address: "c:1")]))
        #expect(states.slotCounts == [0, 0, Placement.slotCount])
        #expect(states.owner(slot: 5) == 2 && states.fallback(slot: 5) == nil)
        let empty = Placement(view: try MembershipView(epoch: 3, members: []))
        #expect(empty.owner(slot: 0) == nil)
    }

    /// A FIFO queue keeps arrival order through the compactions of a queue that never empties,
    /// a value pushed back comes out first, and removing by value keeps the others' order.
    @Test func aFIFOQueueKeepsItsOrder() {
        var q = FIFOQueue<Int>()
        #expect(q.isEmpty && q.take() == nil && q.first == nil)
        var sent = 0
        var next = 0
        for _ in 0..<500 {
            q.append(sent)
            q.append(sent + 1)
            sent += 2
            #expect(q.take() == next)
            next += 1
        }
        #expect(q.count == sent - next && q.first == next)
        q.pushFront(-1)
        #expect(q.take() == -1 && q.contains(next) && !q.contains(-1))
        q.removeAll { $0 % 2 == 0 }
        #expect(Array(q.elements) == Array(next..<sent).filter { $0 % 2 != 0 })
        q.pushFront(-2)
        #expect(Array(q.elements.prefix(2)) == [-2, (next | 1)])
        q.removeAll()
        #expect(q.isEmpty && q.count == 0)
    }

    /// Views that differ only in addresses, RDMA flags or epoch place alike; a member more, a
    /// weight or a state changed do not.
    @Test func viewsThatPlaceAlike() throws {
        let a = try MembershipView(epoch: 1, members: [Member(id: "a", address: "a:1"), Member(id: "b", address: "b:1", weight: 2)])
        let moved = try MembershipView(epoch: 2, members: [Member(id: "b", address: "b:2", weight: 2, rdma: true), Member(id: "a", address: "a:1")])
        #expect(a.placesLike(moved) && moved.placesLike(a))
        #expect(!a.placesLike(try MembershipView(epoch: 2, members: a.members + [Member(id: "c", address: "c:1")])))
        #expect(!a.placesLike(try MembershipView(epoch: 2, members: [Member(id: "a", address: "a:1"), Member(id: "b", address: "b:1")])))
        #expect(!a.placesLike(try MembershipView(epoch: 2, members: [Member(id: "a", address: "a:1", state: .draining), a.members[1]])))
    }

    @Test func theScoresLogarithmMatchesLibm() {
        var bits: UInt64 = 12345
        for _ in 0..<100_000 {
            bits = bits &* 6364136223846793005 &+ 1442695040888963407
            let u = (Double(bits >> 11) + 0.5) / 9_007_199_254_740_992
            let want = Foundation.log(u)
            #expect(abs(Placement.logUnit(bits) - want) <= 1e-10 * abs(want) + 1e-15)
        }
        #expect(abs(Placement.logUnit(UInt64.max) - Foundation.log((Double(UInt64.max >> 11) + 0.5) / 9_007_199_254_740_992)) < 1e-15)
        #expect(abs(Placement.logUnit(0) - Foundation.log(0.5 / 9_007_199_254_740_992)) < 1e-9)
    }

    @Test func aViewRefusesDuplicateIdsAndBadWeights() {
        #expect(throws: ShoalError.self) { try MembershipView(epoch: 1, members: [Member(id: "a", address: "x:1"), Member(id: "a", address: "y:1")]) }
        #expect(throws: ShoalError.self) { try MembershipView(epoch: 1, members: [Member(id: "a", address: "x:1", weight: -1)]) }
        #expect(throws: ShoalError.self) { try MembershipView(epoch: 1, members: [Member(id: "a", address: "x:1", weight: .nan)]) }
        #expect(throws: ShoalError.self) { try MembershipView(epoch: 1, members: [Member(id: "", address: "x:1")]) }
    }
}

@Suite struct Base64Tests {
    /// RFC 4648's vectors, a round trip of every length up to 64, and text that is not base64.
    @Test func vectorsRoundTripsAndRefusals() {
        let vectors = ["": "", "f": "Zg==", "fo": "Zm8=", "foo": "Zm9v", "foob": "Zm9vYg==", "fooba": "Zm9vYmE=", "foobar": "Zm9vYmFy"]
        for (plain, encoded) in vectors {
            #expect(Base64.encode(plain.utf8) == encoded)
            #expect(Base64.decode(encoded) == Array(plain.utf8))
        }
        for n in 0...64 {
            let bytes = (0..<n).map { UInt8(truncatingIfNeeded: $0 * 37 + 11) }
            #expect(Base64.decode(Base64.encode(bytes)) == bytes)
        }
        for bad in ["Zg=", "Z===", "Zm9v!A==", "Zg==Zg==", "=Zg="] { #expect(Base64.decode(bad) == nil, "\(bad)") }
    }
}

@Suite struct CRC32CCombineTests {
    /// crc(A || B) from crc(A), crc(B) and |B|, for random splits; and a block's CRC from its
    /// pieces' (all one length but the last), as a fill computes it.
    @Test func combiningPiecesGivesTheWholeCRC() {
        var rng = SplitMix(seed: 5)
        let bytes = (0..<300_000).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        let whole = CRC32C.checksum(bytes)
        for _ in 0..<40 {
            let cut = Int(rng.next() % UInt64(bytes.count + 1))
            let a = CRC32C.checksum(Array(bytes[..<cut])), b = CRC32C.checksum(Array(bytes[cut...]))
            #expect(CRC32C.combine(a, b, secondLength: bytes.count - cut) == whole, "cut at \(cut)")
        }
        for piece in [4096, 65536, 99_999, 100_000, 300_000] {
            let pieces = stride(from: 0, to: bytes.count, by: piece).map { CRC32C.checksum(Array(bytes[$0..<min(bytes.count, $0 + piece)])) }
            let last = bytes.count - (pieces.count - 1) * piece
            #expect(CRC32C.combine(pieces: pieces, pieceLength: piece, lastLength: last) == whole, "pieces of \(piece)")
        }
        #expect(CRC32C.combine(pieces: [], pieceLength: 1, lastLength: 0) == 0)
    }
}
