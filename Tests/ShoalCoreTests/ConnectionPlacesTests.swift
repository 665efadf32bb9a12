import Testing
import ShoalCore

@Suite struct ConnectionPlacesTests {
    /// Full: the oldest untrusted connection gives its place up; trusted ones never do; with all
    /// trusted, the next is refused; a displaced one's release frees nothing.
    @Test func theOldestUntrustedGivesItsPlaceUp() {
        var places = ConnectionPlaces<Int>(limit: 3)
        #expect(places.admit(1) == .admitted(displacing: nil))
        #expect(places.admit(2) == .admitted(displacing: nil))
        #expect(places.admit(3) == .admitted(displacing: nil))
        places.trust(1)
        #expect(places.admit(4) == .admitted(displacing: 2))
        #expect(places.admit(5) == .admitted(displacing: 3))
        places.release(2)  // already displaced
        #expect(places.count == 3 && places.isFull)
        places.trust(4)
        places.trust(5)
        #expect(places.admit(6) == .full)
        places.release(4)
        #expect(places.admit(6) == .admitted(displacing: nil))
    }
}
