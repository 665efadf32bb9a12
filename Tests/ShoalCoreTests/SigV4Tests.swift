import Testing
@testable import ShoalCore

/// Against the examples of AWS's "Signature Calculations for the Authorization Header" (S3 API
/// reference): their key, date, requests and published signatures.
@Suite struct SigV4Tests {
    static let key = SigV4.SigningKey(secretKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", day: "20130524", region: "us-east-1")
    static let host = "examplebucket.s3.amazonaws.com"

    private func authorization(_ headers: [(name: String, value: String)]) -> String? {
        headers.first { $0.name == "Authorization" }?.value
    }

    @Test func aRangedGetIsSignedAsAWSSigns() {
        let headers = SigV4.sign(method: "GET", host: Self.host, path: "/test.txt", query: "", payloadHash: SigV4.emptyPayloadHash,
                                 amzDate: "20130524T000000Z", key: Self.key, accessKey: "AKIAIOSFODNN7EXAMPLE",
                                 extra: [("range", "bytes=0-9")])
        #expect(authorization(headers) == "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
        #expect(headers.first { $0.name == "x-amz-date" }?.value == "20130524T000000Z")
        #expect(headers.first { $0.name == "x-amz-content-sha256" }?.value == SigV4.emptyPayloadHash)
    }

    @Test func aListingSignsItsQuery() {
        let headers = SigV4.sign(method: "GET", host: Self.host, path: "/", query: "max-keys=2&prefix=J", payloadHash: SigV4.emptyPayloadHash,
                                 amzDate: "20130524T000000Z", key: Self.key, accessKey: "AKIAIOSFODNN7EXAMPLE")
        #expect(authorization(headers)?.hasSuffix("SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7") == true)
        // Anything else signed gives another signature: the query, the path, the method, the day.
        let other = SigV4.sign(method: "GET", host: Self.host, path: "/", query: "max-keys=2&prefix=K", payloadHash: SigV4.emptyPayloadHash,
                               amzDate: "20130524T000000Z", key: Self.key, accessKey: "AKIAIOSFODNN7EXAMPLE")
        #expect(authorization(other) != authorization(headers))
        let nextDay = SigV4.SigningKey(secretKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", day: "20130525", region: "us-east-1")
        #expect(nextDay != Self.key)
    }

    @Test func amzDateIsUTC() {
        #expect(SigV4.amzDate(unixSeconds: 0) == "19700101T000000Z")
        #expect(SigV4.amzDate(unixSeconds: 1_369_353_600) == "20130524T000000Z")
        #expect(SigV4.amzDate(unixSeconds: 951_868_799) == "20000229T235959Z")  // a leap day of a year divisible by 400
        #expect(SigV4.amzDate(unixSeconds: 4_107_542_400) == "21000301T000000Z")  // 2100 is not a leap year
        #expect(SigV4.amzDate(unixSeconds: -1) == "19691231T235959Z")
    }

    @Test func headerValuesAreSignedTrimmed() {
        #expect(SigV4.trimmed("  a   b \t c  ") == "a b c")
        #expect(SigV4.trimmed("") == "")
    }
}
