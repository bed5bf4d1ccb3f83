import java.lang.reflect.Field;
import org.eclipse.jetty.server.Connector;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;
import software.amazon.dynamodb.services.local.main.ServerRunner;
import software.amazon.dynamodb.services.local.server.DynamoDBProxyServer;

/**
 * Starts DynamoDB Local like its own main class does, but listening on one address only
 * (127.0.0.1 unless -Dddblocal.host=... says otherwise): DynamoDBLocal.jar has no option for that
 * and listens on every interface. It also never configures DynamoDB Local's telemetry, so none is sent.
 * Run as a single source file: java -cp DynamoDBLocal.jar LoopbackDynamoDBLocal.java -inMemory -port 8000
 */
public class LoopbackDynamoDBLocal {
    public static void main(String[] args) throws Exception {
        String host = System.getProperty("ddblocal.host", "127.0.0.1");
        DynamoDBProxyServer proxy = ServerRunner.createServerFromCommandLineArgs(args);
        Field field = DynamoDBProxyServer.class.getDeclaredField("server");
        field.setAccessible(true);
        Server server = (Server) field.get(proxy);
        Connector[] connectors = server.getConnectors();
        if (connectors.length == 0) throw new IllegalStateException("DynamoDB Local has no connector");
        for (Connector connector : connectors) ((ServerConnector) connector).setHost(host);
        proxy.start();
        if (!server.isStarted()) System.exit(1); // start() prints why (e.g. port in use)
        System.out.println("DynamoDB Local listening on " + host + ":" + ((ServerConnector) connectors[0]).getPort());
    }
}
