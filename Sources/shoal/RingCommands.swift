import ArgumentParser
import ShoalClient
import ShoalCore
import ShoalSys
import ShoalTransport

/// `shoal ring`: the view a client routes by, member by member.
struct RingCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ring", abstract: "Show the cluster's members: address, state, weight, share of the slots, and whether each answers.")

    @OptionGroup var client: ClientOptions
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        let config = try client.makeClientConfig()
        let view: MembershipView
        do { view = try ShoalClient(config: config).view } catch { throw fail(error.message) }
        let placement = Placement(view: view)
        var rows: [(Member, Double, String)] = []
        for (i, m) in view.members.enumerated() {
            rows.append((m, placement.share(of: i), RingCommand.probe(m, config)))
        }
        if json {
            let members = rows.map { m, share, answer in
                "{\"id\":\(JSONText.quote(m.id)),\"address\":\(JSONText.quote(m.address)),\"state\":\"\(m.state.rawValue)\","
                    + "\"weight\":\(m.weight),\"share\":\(formatFixed(share, decimals: 5)),\"answers\":\(answer == "yes"),\"probe\":\(JSONText.quote(answer))}"
            }
            print("{\"epoch\":\(view.epoch),\"members\":[\(members.joined(separator: ","))]}")
            return
        }
        print("epoch \(view.epoch), \(view.members.count) members")
        print("id\taddress\tstate\tweight\tshare\tanswers")
        for (m, share, answer) in rows {
            let weight = m.weight >= 1024 && m.weight == m.weight.rounded() && m.weight < 1e18 ? ByteSize.format(UInt64(m.weight)) : "\(m.weight)"
            print("\(m.id)\t\(m.address)\t\(m.state.rawValue)\t\(weight)\t\(formatFixed(share * 100, decimals: 2))%\t\(answer)")
        }
    }

    /// Connects and runs the handshake: "yes", or why not.
    static func probe(_ m: Member, _ config: ClientConfig) -> String {
        guard let endpoint = Endpoint(m.address) else { return "no: not host:port" }
        var tls: TLSContext?
        if let ca = config.tlsCAFile {
            do { tls = try TLSContext.client(caFile: ca) } catch { return "no: \(error.message)" }
        }
        do {
            let c = try WorkerConnection(endpoint: endpoint, secret: config.secret, clientName: "shoal-ring", timeoutMillis: 2000,
                                         connectTimeoutMillis: 1000, tls: tls)
            c.close()
            return "yes"
        } catch {
            return "no: \(error.message)"
        }
    }
}

/// Sets a member's state: in etcd (its drain key), or in the members file (raising its epoch).
/// Clients and workers see the change with their next look at the source.
struct MemberStateChange {
    static func apply(file: String?, etcd: String?, prefix: String?, credentials: String?, id: String, to state: MemberState) throws {
        do {
            var settings: [String: String] = [:]
            settings["etcd"] = etcd
            settings["members_file"] = file
            settings["etcd_prefix"] = prefix
            settings["etcd_credentials_file"] = credentials
            let m = try ClientSettings.membership(settings)
            if !m.etcd.isEmpty {
                let client = try EtcdClient(endpoints: m.etcd, user: m.etcdUser, password: m.etcdPassword)
                let prefix = m.etcdPrefix
                let (revision, kvs) = try client.range(prefix: prefix)
                let view = try EtcdMembers.view(prefix: prefix, revision: revision, kvs: kvs)
                guard view.index(of: id) != nil else {
                    throw ShoalError(.badRequest, "no member '\(id)' registered under \(prefix) in etcd (members: \(view.members.map(\.id).joined(separator: ", ")))")
                }
                let key = EtcdMembers.drainKey(prefix: prefix, id: id)
                if state == .draining { try client.put(key, []) } else { try client.delete(key) }
                print("\(id): \(state.rawValue) (etcd \(key))")
                return
            }
            guard let path = m.membersFile else {
                throw fail("no members file and no etcd: pass --members FILE or --etcd HOST:PORT, or set SHOAL_MEMBERS_FILE or SHOAL_ETCD", code: 2)
            }
            let view = try MembersFile.load(path)
            guard let i = view.index(of: id) else {
                throw ShoalError(.badRequest, "no member '\(id)' in \(path) (members: \(view.members.map(\.id).joined(separator: ", ")))")
            }
            var members = view.members
            members[i].state = state
            try MembersFile.write(try MembershipView(epoch: view.epoch + 1, members: members), to: path)
            print("\(id): \(state.rawValue) (epoch \(view.epoch + 1))")
        } catch let error as ShoalError {
            throw fail(error.message.replacingSettingNames())
        }
    }
}

/// Where `drain` and `undrain` make their change.
struct MemberSourceOptions: ParsableArguments {
    @Option(help: "The members file (default: $SHOAL_MEMBERS_FILE).") var members: String?
    @Option(help: "etcd's host:port, comma-separated (default: $SHOAL_ETCD; wins over the members file).") var etcd: String?
    @Option(help: "The cluster's key prefix in etcd (default: $SHOAL_ETCD_PREFIX or /shoal/default/).") var etcdPrefix: String?
    @Option(help: "File setting SHOAL_ETCD_USER and SHOAL_ETCD_PASSWORD (default: $SHOAL_ETCD_CREDENTIALS_FILE).") var etcdCredentialsFile: String?
}

struct DrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "drain", abstract: "Take a member out of placement (its blocks go to the others), in etcd or the members file.")
    @Argument(help: "The member's id.") var id: String
    @OptionGroup var source: MemberSourceOptions

    func run() throws { try MemberStateChange.apply(file: source.members, etcd: source.etcd, prefix: source.etcdPrefix, credentials: source.etcdCredentialsFile, id: id, to: .draining) }
}

struct UndrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "undrain", abstract: "Put a drained member back into placement, in etcd or the members file.")
    @Argument(help: "The member's id.") var id: String
    @OptionGroup var source: MemberSourceOptions

    func run() throws { try MemberStateChange.apply(file: source.members, etcd: source.etcd, prefix: source.etcdPrefix, credentials: source.etcdCredentialsFile, id: id, to: .active) }
}
