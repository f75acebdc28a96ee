// The secured test broker's administrator (testkit/src/secured.rs runs it with Java's
// single-file source launcher and Kafka's own client jars): creates topics and grants or revokes
// ACLs through Kafka's Admin API, as the super user. Arguments: the bootstrap address and a
// client properties file. Standard input: one command a line,
//   topic NAME PARTITIONS REPLICATION_FACTOR
//   allow PRINCIPAL RESOURCE_TYPE RESOURCE_NAME OPERATION
//   revoke PRINCIPAL RESOURCE_TYPE RESOURCE_NAME OPERATION
// Grants and revocations return once the broker's authorizer lists (or no longer lists) them.
import java.io.BufferedReader;
import java.io.FileInputStream;
import java.io.InputStreamReader;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.HashSet;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclBindingFilter;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class TallyKafkaAdmin {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        try (FileInputStream in = new FileInputStream(args[1])) {
            props.load(in);
        }
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        List<NewTopic> topics = new ArrayList<>();
        List<AclBinding> grants = new ArrayList<>();
        List<AclBinding> revokes = new ArrayList<>();
        BufferedReader stdin = new BufferedReader(new InputStreamReader(System.in));
        for (String line; (line = stdin.readLine()) != null; ) {
            String[] w = line.trim().split("\\s+");
            if (w.length == 0 || w[0].isEmpty()) continue;
            switch (w[0]) {
                case "topic":
                    topics.add(new NewTopic(w[1], Integer.parseInt(w[2]), Short.parseShort(w[3]))
                        .configs(Map.of("retention.ms", "-1", "retention.bytes", "-1",
                                        "cleanup.policy", "delete")));
                    break;
                case "allow":
                case "revoke":
                    AclBinding b = new AclBinding(
                        new ResourcePattern(ResourceType.valueOf(w[2]), w[3], PatternType.LITERAL),
                        new AccessControlEntry(w[1], "*", AclOperation.valueOf(w[4]),
                                               AclPermissionType.ALLOW));
                    (w[0].equals("allow") ? grants : revokes).add(b);
                    break;
                default:
                    throw new IllegalArgumentException("unknown command: " + line);
            }
        }
        try (Admin admin = Admin.create(props)) {
            if (!topics.isEmpty()) admin.createTopics(topics).all().get();
            if (!grants.isEmpty()) admin.createAcls(grants).all().get();
            if (!revokes.isEmpty()) {
                List<AclBindingFilter> filters = new ArrayList<>();
                for (AclBinding b : revokes) filters.add(b.toFilter());
                admin.deleteAcls(filters).all().get();
            }
            long deadline = System.currentTimeMillis() + 60_000;
            while (true) {
                Set<AclBinding> now = new HashSet<>(admin.describeAcls(AclBindingFilter.ANY).values().get());
                boolean done = now.containsAll(grants);
                for (AclBinding b : revokes) done &= !now.contains(b);
                if (done) break;
                if (System.currentTimeMillis() > deadline)
                    throw new IllegalStateException("the broker's authorizer did not apply the ACL changes within 60 s");
                Thread.sleep(100);
            }
        }
    }
}
