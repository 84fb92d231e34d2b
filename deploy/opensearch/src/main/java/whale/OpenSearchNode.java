// A single-node OpenSearch 2.19 for whale's tests and benchmarks, started from Maven Central jars
// without Docker or a distribution tarball. MockNode is the test framework's node that accepts
// classpath plugins; we add the Netty4 HTTP transport (REST on the given port) and analysis-common.
// It deliberately does not extend the test case classes (they install a security manager and run
// jar-hell checks). It stops on SIGTERM/SIGINT or when stdin closes, so a parent that dies does
// not leave it behind.
package whale;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;

import org.opensearch.analysis.common.CommonAnalysisPlugin;
import org.opensearch.common.settings.Settings;
import org.opensearch.node.MockNode;
import org.opensearch.node.Node;
import org.opensearch.transport.Netty4Plugin;

public final class OpenSearchNode {
    private OpenSearchNode() {}

    public static void main(String[] args) throws Exception {
        if (args.length < 1) {
            System.err.println("usage: OpenSearchNode HTTP_PORT [DATA_DIR]");
            System.exit(2);
        }
        int port = Integer.parseInt(args[0]);
        Path home = args.length > 1 ? Path.of(args[1]) : Files.createTempDirectory("whale-opensearch");
        Files.createDirectories(home);
        Settings settings = Settings.builder()
            .put("cluster.name", "whale-test")
            .put("node.name", "whale-test-node")
            .put("path.home", home.toString())
            .put("path.data", home.resolve("data").toString())
            .put("path.logs", home.resolve("logs").toString())
            .put("discovery.type", "single-node")
            .put("network.host", "127.0.0.1")
            .put("http.port", port)
            .put("transport.port", 0)
            .put("node.processors", 1)
            .put("cluster.routing.allocation.disk.watermark.low", "1b")
            .put("cluster.routing.allocation.disk.watermark.high", "1b")
            .put("cluster.routing.allocation.disk.watermark.flood_stage", "1b")
            .put("indices.breaker.total.use_real_memory", false)
            .put("action.auto_create_index", true)
            .build();
        Node node = new MockNode(
            settings,
            List.of(Netty4Plugin.class, CommonAnalysisPlugin.class));
        node.start();
        System.out.println("whale-opensearch: listening on http://127.0.0.1:" + port + " (home " + home + ")");
        System.out.flush();

        Thread stopper = new Thread(() -> {
            try {
                node.close();
            } catch (Exception e) {
                System.err.println("whale-opensearch: close: " + e);
            }
        });
        Runtime.getRuntime().addShutdownHook(stopper);
        // Stop when the parent closes our stdin (the Rust helper keeps a pipe open).
        if (args.length > 2 && args[2].equals("--stdin-watch")) {
            while (System.in.read() != -1) {
                // discard
            }
            System.exit(0);
        }
        Thread.currentThread().join();
    }
}
