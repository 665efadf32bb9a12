/// Byte counts written for people: "4MiB", "1.5 GB", "512k", "100".
public enum ByteSize {
    /// Parses a size; binary (KiB, MiB, ...) and decimal (KB, MB, ...) suffixes, `k`/`m`/`g`/`t` as binary.
    public static func parse(_ text: String) -> UInt64? {
        let trimmed = text.trimmingSpaces()
        guard !trimmed.isEmpty else { return nil }
        var numberPart = ""
        var unitPart = ""
        for ch in trimmed {
            if unitPart.isEmpty && (ch.isNumber || ch == ".") { numberPart.append(ch) } else if ch != " " { unitPart.append(ch) }
        }
        guard let value = Double(numberPart), value >= 0 else { return nil }
        let multiplier: Double
        switch unitPart.lowercased() {
        case "", "b": multiplier = 1
        case "k", "kib": multiplier = 1024
        case "m", "mib": multiplier = 1024 * 1024
        case "g", "gib": multiplier = 1024 * 1024 * 1024
        case "t", "tib": multiplier = 1024 * 1024 * 1024 * 1024
        case "kb": multiplier = 1e3
        case "mb": multiplier = 1e6
        case "gb": multiplier = 1e9
        case "tb": multiplier = 1e12
        default: return nil
        }
        let bytes = value * multiplier
        guard bytes < 1.8e19, bytes == bytes.rounded(.down) else { return nil }
        return UInt64(bytes)
    }

    /// "4 MiB", "1.50 GiB", "17 B".
    public static func format(_ bytes: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
        var value = Double(bytes)
        var unit = 0
        while value >= 1024 && unit < units.count - 1 { value /= 1024; unit += 1 }
        if unit == 0 { return "\(bytes) B" }
        if value == value.rounded() { return "\(Int(value)) \(units[unit])" }
        return "\(formatFixed(value, decimals: 2)) \(units[unit])"
    }

    /// Throughput as "1.23 GB/s" (decimal, as network and disk figures are given).
    public static func formatRate(bytes: UInt64, seconds: Double) -> String {
        guard seconds > 0 else { return "-" }
        let rate = Double(bytes) / seconds
        if rate >= 1e9 { return "\(formatFixed(rate / 1e9, decimals: 2)) GB/s" }
        if rate >= 1e6 { return "\(formatFixed(rate / 1e6, decimals: 1)) MB/s" }
        return "\(formatFixed(rate / 1e3, decimals: 1)) kB/s"
    }
}

/// Durations written for people: "60s", "500ms", "2m", "1h", "0".
public enum DurationText {
    public static func parseSeconds(_ text: String) -> Double? {
        let t = text.trimmingSpaces().lowercased()
        let suffixes: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]
        for (suffix, scale) in suffixes where t.hasSuffix(suffix) {
            guard let v = Double(t.dropLast(suffix.count)), v >= 0 else { return nil }
            return v * scale
        }
        guard let v = Double(t), v >= 0 else { return nil }
        return v
    }
}

/// Formats without Foundation: `decimals` digits after the point.
public func formatFixed(_ value: Double, decimals: Int) -> String {
    guard value.isFinite else { return "\(value)" }
    var scale = 1.0
    for _ in 0..<decimals { scale *= 10 }
    let negative = value < 0
    let scaled = (abs(value) * scale).rounded()
    let whole = UInt64(scaled / scale)
    let fraction = UInt64(scaled - Double(whole) * scale)
    var text = "\(whole)"
    if decimals > 0 {
        var f = "\(fraction)"
        while f.count < decimals { f = "0" + f }
        text += "." + f
    }
    return negative ? "-" + text : text
}

extension StringProtocol {
    /// The text without leading and trailing spaces, tabs and line ends.
    public func trimmingSpaces() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" || f == "\n" || f == "\r" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\n" || l == "\r" { s = s.dropLast() }
        return String(s)
    }
}

/// JSON text without Foundation (the client library avoids it).
public enum JSONText {
    /// `s` as a quoted JSON string.
    public static func quote(_ s: String) -> String {
        var out = "\""
        for ch in s.unicodeScalars {
            switch ch {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            default:
                if ch.value < 0x20 {
                    let hex = String(ch.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(ch)
                }
            }
        }
        return out + "\""
    }
}
