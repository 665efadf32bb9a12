/// Status codes shared by the wire protocol, the client and the command line.
public enum StatusCode: UInt16, Sendable, CaseIterable {
    case ok = 0
    case badRequest = 1
    case unauthenticated = 2
    case unsupportedVersion = 3
    case notFound = 4
    case accessDenied = 5
    case preconditionFailed = 6
    case storeUnavailable = 7
    case `internal` = 8
    case tooLarge = 9
    case unknownStore = 10
    case shuttingDown = 11
    case checksumMismatch = 12
    case timeout = 13
    case connectionFailed = 14
    case tampered = 15
    /// The worker does not own the block in a view newer than the one the READ was routed by.
    case notOwner = 16
    /// A warm's block was fetched, but the worker could not cache it (its disk had no room ready
    /// in time, or failed); asking again may pass.
    case notCached = 17

    /// The label used in metrics and logs.
    public var label: String {
        switch self {
        case .ok: "ok"
        case .badRequest: "bad_request"
        case .unauthenticated: "unauthenticated"
        case .unsupportedVersion: "unsupported_version"
        case .notFound: "not_found"
        case .accessDenied: "access_denied"
        case .preconditionFailed: "precondition_failed"
        case .storeUnavailable: "store_unavailable"
        case .internal: "internal"
        case .tooLarge: "too_large"
        case .unknownStore: "unknown_store"
        case .shuttingDown: "shutting_down"
        case .checksumMismatch: "checksum_mismatch"
        case .timeout: "timeout"
        case .connectionFailed: "connection_failed"
        case .tampered: "tampered"
        case .notOwner: "not_owner"
        case .notCached: "not_cached"
        }
    }
}

/// An error with a status a program can branch on and a message a person can act on.
public struct ShoalError: Error, Sendable, Equatable, CustomStringConvertible {
    public var code: StatusCode
    public var message: String

    public init(_ code: StatusCode, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}
