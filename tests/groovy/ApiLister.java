import java.io.IOException;
import java.lang.reflect.Constructor;
import java.lang.reflect.Executable;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import java.util.TreeSet;
import java.util.stream.Collectors;
import java.util.stream.Stream;

/**
 * Prints the public API of the compiled stand-ins (classes under qupath/ and javafx/ of the folder given), one line
 * per public type, constructor and method, in the format of tests/groovy/qupath_api.txt:
 * <pre>
 * qupath.lib.objects.PathObject | public abstract class
 * qupath.lib.objects.PathObject | public &lt;init&gt;(qupath.lib.measurements.MeasurementList)
 * qupath.lib.scripting.QP | public static java.util.Collection getAnnotationObjects()
 * </pre>
 * Types are erased, nested types are written Outer$Inner. Protected members count as API; package-private and
 * private ones (the stand-ins' own plumbing) do not.
 */
public class ApiLister {
    public static void main(String[] args) throws Exception {
        Path root = Paths.get(args[0]);
        TreeSet<String> lines = new TreeSet<>();
        for (String top : List.of("qupath", "javafx")) {
            if (!Files.isDirectory(root.resolve(top)))
                continue;
            for (String name : classNames(root, root.resolve(top))) {
                Class<?> cls = Class.forName(name, false, ApiLister.class.getClassLoader());
                if (!isVisible(cls))
                    continue;
                lines.add(cls.getName() + " | " + kind(cls));
                for (Constructor<?> c : cls.getDeclaredConstructors())
                    if (isApi(c) && !cls.isEnum())
                        lines.add(cls.getName() + " | " + visibility(c) + " <init>(" + params(c) + ")");
                for (Method m : cls.getDeclaredMethods()) {
                    if (!isApi(m) || m.isSynthetic() || m.isBridge())
                        continue;
                    if (cls.isEnum() && (m.getName().equals("values") || m.getName().equals("valueOf")))
                        continue;
                    lines.add(cls.getName() + " | " + visibility(m) + (Modifier.isStatic(m.getModifiers())
                            ? " static " : " ") + m.getReturnType().getTypeName() + " " + m.getName()
                            + "(" + params(m) + ")");
                }
            }
        }
        lines.forEach(System.out::println);
    }

    private static List<String> classNames(Path root, Path folder) throws IOException {
        try (Stream<Path> files = Files.walk(folder)) {
            return files.filter(p -> p.toString().endsWith(".class"))
                    .map(p -> root.relativize(p).toString().replace(".class", "").replace('/', '.'))
                    .collect(Collectors.toCollection(ArrayList::new));
        }
    }

    private static boolean isVisible(Class<?> cls) {
        for (Class<?> c = cls; c != null; c = c.getDeclaringClass())
            if (!Modifier.isPublic(c.getModifiers()) || c.isAnonymousClass() || c.isLocalClass())
                return false;
        return true;
    }

    private static boolean isApi(Executable e) {
        return Modifier.isPublic(e.getModifiers()) || Modifier.isProtected(e.getModifiers());
    }

    private static String visibility(Executable e) {
        return Modifier.isPublic(e.getModifiers()) ? "public" : "protected";
    }

    private static String kind(Class<?> cls) {
        if (cls.isInterface())
            return "public interface";
        if (cls.isEnum())
            return "public enum";
        int m = cls.getModifiers();
        return "public " + (cls.getDeclaringClass() != null && Modifier.isStatic(m) ? "static " : "")
                + (Modifier.isAbstract(m) ? "abstract " : "") + (Modifier.isFinal(m) ? "final " : "") + "class";
    }

    private static String params(Executable e) {
        return Stream.of(e.getParameterTypes()).map(Class::getTypeName).collect(Collectors.joining(","));
    }
}
