import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.ResultSetMetaData;
import java.sql.SQLException;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;

/**
 * Runs SQL against vigil through the Arrow Flight SQL JDBC driver (the one DBeaver and
 * other JDBC tools load) and prints results as tab-separated lines for the Rust
 * end-to-end tests: "COLS\tname:type...", then "ROW\tv1\tv2...", then "END"; a failing
 * query prints "ERROR\tmessage". After the queries it prints DatabaseMetaData tables
 * ("TABLE\tcatalog\tschema\tname\ttype") and columns of table `cpu`
 * ("COLUMN\tname\ttype").
 *
 * Usage: java -cp driver.jar:. JdbcClient URL [user password] < queries (one per line; a
 * line "?sql|arg" runs a prepared statement with one string parameter).
 */
public class JdbcClient {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        if (args.length >= 3) {
            props.setProperty("user", args[1]);
            props.setProperty("password", args[2]);
        }
        List<String> queries = new ArrayList<>();
        try (java.io.BufferedReader in = new java.io.BufferedReader(new java.io.InputStreamReader(System.in))) {
            String line;
            while ((line = in.readLine()) != null) {
                if (!line.isBlank()) queries.add(line);
            }
        }
        try (Connection conn = DriverManager.getConnection(args[0], props)) {
            for (String q : queries) {
                try {
                    if (q.startsWith("?")) {
                        String[] parts = q.substring(1).split("\\|", 2);
                        try (PreparedStatement ps = conn.prepareStatement(parts[0])) {
                            ps.setString(1, parts[1]);
                            try (ResultSet rs = ps.executeQuery()) {
                                print(rs);
                            }
                        }
                    } else {
                        try (java.sql.Statement st = conn.createStatement(); ResultSet rs = st.executeQuery(q)) {
                            print(rs);
                        }
                    }
                } catch (SQLException e) {
                    System.out.println("ERROR\t" + e.getMessage().replace('\n', ' '));
                }
            }
            DatabaseMetaData md = conn.getMetaData();
            System.out.println("PRODUCT\t" + md.getDatabaseProductName() + "\t" + md.getDatabaseProductVersion());
            try (ResultSet rs = md.getTables(null, null, "%", null)) {
                while (rs.next()) {
                    System.out.println("TABLE\t" + rs.getString("TABLE_CAT") + "\t" + rs.getString("TABLE_SCHEM")
                        + "\t" + rs.getString("TABLE_NAME") + "\t" + rs.getString("TABLE_TYPE"));
                }
            }
            try (ResultSet rs = md.getCatalogs()) {
                while (rs.next()) {
                    System.out.println("CATALOG\t" + rs.getString("TABLE_CAT"));
                }
            }
            try (ResultSet rs = md.getTableTypes()) {
                while (rs.next()) {
                    System.out.println("TABLETYPE\t" + rs.getString("TABLE_TYPE"));
                }
            }
            try (ResultSet rs = md.getSchemas()) {
                while (rs.next()) {
                    System.out.println("SCHEMA\t" + rs.getString("TABLE_SCHEM"));
                }
            }
            try (ResultSet rs = md.getColumns(null, null, "cpu", "%")) {
                while (rs.next()) {
                    System.out.println("COLUMN\t" + rs.getString("COLUMN_NAME") + "\t" + rs.getString("TYPE_NAME"));
                }
            }
        }
    }

    private static void print(ResultSet rs) throws SQLException {
        ResultSetMetaData md = rs.getMetaData();
        StringBuilder cols = new StringBuilder("COLS");
        for (int i = 1; i <= md.getColumnCount(); i++) {
            cols.append('\t').append(md.getColumnName(i)).append(':').append(md.getColumnTypeName(i));
        }
        System.out.println(cols);
        while (rs.next()) {
            StringBuilder row = new StringBuilder("ROW");
            for (int i = 1; i <= md.getColumnCount(); i++) {
                row.append('\t').append(rs.getString(i));
            }
            System.out.println(row);
        }
        System.out.println("END");
    }
}
