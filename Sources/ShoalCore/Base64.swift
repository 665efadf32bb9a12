/// Standard base64 (RFC 4648, with padding), as etcd's JSON gateway writes keys and values.
public enum Base64 {
    static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    static let values: [UInt8] = {
        var table = [UInt8](repeating: 0xFF, count: 256)
        for (i, c) in alphabet.enumerated() { table[Int(c)] = UInt8(i) }
        return table
    }()

    public static func encode(_ bytes: some Collection<UInt8>) -> String {
        let input = Array(bytes)
        var out: [UInt8] = []
        out.reserveCapacity((input.count + 2) / 3 * 4)
        var i = 0
        while i < input.count {
            let n = min(3, input.count - i)
            let b0 = UInt32(input[i]), b1 = n > 1 ? UInt32(input[i + 1]) : 0, b2 = n > 2 ? UInt32(input[i + 2]) : 0
            let word = b0 << 16 | b1 << 8 | b2
            out.append(alphabet[Int(word >> 18 & 63)])
            out.append(alphabet[Int(word >> 12 & 63)])
            out.append(n > 1 ? alphabet[Int(word >> 6 & 63)] : UInt8(ascii: "="))
            out.append(n > 2 ? alphabet[Int(word & 63)] : UInt8(ascii: "="))
            i += 3
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The bytes of `text`; nil when it is not base64.
    public static func decode(_ text: String) -> [UInt8]? {
        let input = Array(text.utf8)
        guard input.count % 4 == 0 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(input.count / 4 * 3)
        var i = 0
        while i < input.count {
            var word: UInt32 = 0
            var pad = 0
            for j in 0..<4 {
                let c = input[i + j]
                if c == UInt8(ascii: "=") {
                    guard i + 4 == input.count, j >= 2 else { return nil }
                    pad += 1
                    word <<= 6
                    continue
                }
                guard pad == 0 else { return nil }
                let v = values[Int(c)]
                guard v != 0xFF else { return nil }
                word = word << 6 | UInt32(v)
            }
            out.append(UInt8(word >> 16 & 0xFF))
            if pad < 2 { out.append(UInt8(word >> 8 & 0xFF)) }
            if pad < 1 { out.append(UInt8(word & 0xFF)) }
            i += 4
        }
        return out
    }
}
