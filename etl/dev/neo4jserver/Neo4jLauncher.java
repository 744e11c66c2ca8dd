import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import java.util.concurrent.CountDownLatch;

import org.neo4j.dbms.api.DatabaseManagementService;
import org.neo4j.dbms.api.DatabaseManagementServiceBuilder;
import org.neo4j.graphdb.QueryExecutionException;

/**
 * A Neo4j Community DBMS with its Bolt connector, for the tests, the benchmarks and the local default.
 *
 * Arguments: the DBMS home directory, its neo4j.conf (both written by etl.dev.neo4jserver) and a ready file. The
 * password of the user neo4j comes from NEO4J_INITIAL_PASSWORD (not the command line, which anyone can read).
 * The ready file is removed before Bolt opens and written once Bolt accepts that password, so a caller that waits
 * for it and the port never sees a previous run's. SIGTERM shuts the DBMS down cleanly (a checkpoint), then the JVM
 * exits as SIGTERM ends it (143).
 */
public final class Neo4jLauncher {
    public static void main(String[] args) throws IOException, InterruptedException {
        Path ready = Path.of(args[2]);
        Files.deleteIfExists(ready);
        CountDownLatch stopped = new CountDownLatch(1);
        try {
            DatabaseManagementService dbms = new DatabaseManagementServiceBuilder(Path.of(args[0]))
                    .loadPropertiesFromFile(Path.of(args[1]))
                    .build();
            Runtime.getRuntime().addShutdownHook(new Thread(() -> {
                try {
                    Files.deleteIfExists(ready);
                } catch (IOException e) {
                    // the file says nothing once the port is closed
                }
                dbms.shutdown();
                stopped.countDown();
            }));
            setPassword(dbms, System.getenv("NEO4J_INITIAL_PASSWORD"));
            Files.writeString(ready, "ready\n");
        } catch (RuntimeException | IOException e) {
            e.printStackTrace();
            System.exit(1); // runs the shutdown hook if set: the DBMS's own threads would keep a failed launch alive
        }
        System.out.println("neo4j-launcher: ready");
        stopped.await();
    }

    /** Embedded code runs without authentication, so it may set the password a server's admin would. */
    private static void setPassword(DatabaseManagementService dbms, String password) {
        if (password == null) {
            return;
        }
        try {
            dbms.database("system").executeTransactionally(
                    "ALTER USER neo4j SET PASSWORD $password CHANGE NOT REQUIRED", Map.of("password", password));
        } catch (QueryExecutionException e) {
            if (!e.getMessage().contains("cannot be the same")) { // a restart: it is set already
                throw e;
            }
        }
    }
}
