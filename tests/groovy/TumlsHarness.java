import com.google.gson.Gson;
import com.google.gson.GsonBuilder;
import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import groovy.lang.Binding;
import groovy.lang.GroovyShell;
import groovy.lang.Script;
import java.io.File;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.UUID;
import java.util.concurrent.atomic.AtomicReference;
import org.codehaus.groovy.runtime.InvokerHelper;
import qupath.lib.common.ColorTools;
import qupath.lib.gui.QuPathGUI;
import qupath.lib.gui.scripting.QPEx;
import qupath.lib.images.ImageData;
import qupath.lib.images.servers.openslide.OpenslideImageServer;
import qupath.lib.objects.PathObject;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.objects.hierarchy.PathObjectHierarchy;
import qupath.lib.projects.Project;
import qupath.lib.projects.ProjectImageEntry;
import qupath.lib.scripting.QP;

/**
 * Runs groovy/tumls_analyze.groovy against the QuPath stand-ins, the way QuPath's "Run for project" does
 * (one image at a time, fresh ImageData each, hierarchies kept per project entry), and dumps what the
 * hierarchies, the classes and the project hold afterwards as JSON.
 *
 * Usage: java -cp ... TumlsHarness config.json dump.json
 * config: {"script": path, "project_file": path or null, "gui": bool,
 *          "classes_before": [{"name", "color"}], "entries": [{"name", "uri", "width", "height",
 *          "pixel_size_um" (or null), "user_objects": n}], "runs": [entry index, ...],
 *          "interrupt": {"server": url, "run": index} or null}
 */
public class TumlsHarness {
    public static void main(String[] args) throws Exception {
        JsonObject config = JsonParser.parseString(Files.readString(Paths.get(args[0]))).getAsJsonObject();
        Path dumpPath = Paths.get(args[1]);
        Script compiled = new GroovyShell().parse(new File(config.get("script").getAsString()));
        Class<? extends Script> scriptClass = compiled.getClass();

        Project<Object> project = null;
        if (config.has("project_file") && !config.get("project_file").isJsonNull())
            project = new Project<>(Paths.get(config.get("project_file").getAsString()));
        QuPathGUI gui = config.has("gui") && config.get("gui").getAsBoolean() ? new QuPathGUI() : null;
        QPEx.setQuPath(gui);
        if (config.has("classes_before")) {
            List<PathClass> before = new ArrayList<>();
            for (JsonElement element : config.getAsJsonArray("classes_before")) {
                JsonObject info = element.getAsJsonObject();
                JsonArray rgb = info.getAsJsonArray("color");
                before.add(PathClass.fromString(info.get("name").getAsString(),
                        ColorTools.packRGB(rgb.get(0).getAsInt(), rgb.get(1).getAsInt(), rgb.get(2).getAsInt())));
            }
            if (project != null)
                project.setPathClasses(before);
            if (gui != null)
                gui.getAvailablePathClasses().addAll(before);
        }

        JsonArray entries = config.getAsJsonArray("entries");
        List<PathObjectHierarchy> hierarchies = new ArrayList<>();
        for (JsonElement element : entries) {
            PathObjectHierarchy hierarchy = new PathObjectHierarchy();
            int userObjects = element.getAsJsonObject().has("user_objects")
                    ? element.getAsJsonObject().get("user_objects").getAsInt() : 0;
            for (int i = 0; i < userObjects; i++) {
                PathObject drawn = new PathObject(UUID.randomUUID(), "annotation", JsonParser.parseString(
                        "{\"type\":\"Polygon\",\"coordinates\":[[[0,0],[10,0],[10,10],[0,0]]]}"));
                drawn.setPathClass(PathClass.fromString("Tumor"));
                drawn.getMeasurementList().put("Drawn by hand", i);
                hierarchy.addObjects(List.of(drawn));
            }
            hierarchies.add(hierarchy);
        }

        JsonObject interrupt = config.has("interrupt") && !config.get("interrupt").isJsonNull()
                ? config.getAsJsonObject("interrupt") : null;
        JsonArray runs = new JsonArray();
        int index = 0;
        for (JsonElement runEntry : config.getAsJsonArray("runs")) {
            int e = runEntry.getAsInt();
            JsonObject entry = entries.get(e).getAsJsonObject();
            double pixelSize = entry.get("pixel_size_um").isJsonNull() ? Double.NaN
                    : entry.get("pixel_size_um").getAsDouble();
            OpenslideImageServer server = new OpenslideImageServer(URI.create(entry.get("uri").getAsString()),
                    entry.get("width").getAsInt(), entry.get("height").getAsInt(), pixelSize,
                    entry.get("name").getAsString());
            QP.setCurrent(new ImageData<>(server, hierarchies.get(e)), project,
                    project == null ? null : new ProjectImageEntry<>(entry.get("name").getAsString()));
            QP.lastAddNanos = 0;

            AtomicReference<Throwable> failure = new AtomicReference<>();
            long start = System.nanoTime();
            Thread thread = new Thread(() -> {
                try {
                    InvokerHelper.createScript(scriptClass, new Binding()).run();
                } catch (Throwable t) {
                    failure.set(t);
                }
            }, "tumls-script");
            thread.start();
            boolean interrupted = false;
            if (interrupt != null && interrupt.get("run").getAsInt() == index)
                interrupted = interruptWhenRunning(thread, interrupt.get("server").getAsString());
            thread.join();

            JsonObject run = new JsonObject();
            run.addProperty("entry", e);
            run.addProperty("interrupted", interrupted);
            Throwable t = failure.get();
            run.addProperty("outcome", t == null ? "ok" : t.getClass().getName());
            run.addProperty("message", t == null ? "" : String.valueOf(t.getMessage()));
            run.addProperty("seconds_to_objects", QP.lastAddNanos == 0 ? -1 : (QP.lastAddNanos - start) / 1e9);
            run.addProperty("seconds", (System.nanoTime() - start) / 1e9);
            runs.add(run);
            index++;
        }

        JsonObject dump = new JsonObject();
        dump.add("runs", runs);
        JsonArray images = new JsonArray();
        for (PathObjectHierarchy hierarchy : hierarchies)
            images.add(describe(hierarchy));
        dump.add("images", images);
        JsonObject classes = new JsonObject();
        for (Map.Entry<String, PathClass> item : PathClass.registry().entrySet())
            classes.add(item.getKey(), rgb(item.getValue().getColor()));
        dump.add("class_colors", classes);
        if (project != null)
            dump.add("project_classes", names(project.getPathClasses()));
        if (gui != null)
            dump.add("gui_classes", names(gui.getAvailablePathClasses()));
        Gson gson = new GsonBuilder().serializeSpecialFloatingPointValues().create();
        Files.writeString(dumpPath, gson.toJson(dump), StandardCharsets.UTF_8);
    }

    /** Interrupt the script (QuPath's "Kill running script") once the server says a job is running. */
    private static boolean interruptWhenRunning(Thread thread, String server) throws Exception {
        HttpClient http = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1)
                .proxy(HttpClient.Builder.NO_PROXY).build();
        long deadline = System.nanoTime() + 120_000_000_000L;
        while (thread.isAlive() && System.nanoTime() < deadline) {
            HttpResponse<String> response = http.send(
                    HttpRequest.newBuilder(URI.create(server + "/jobs?state=running&limit=1"))
                            .timeout(Duration.ofSeconds(10)).build(),
                    HttpResponse.BodyHandlers.ofString());
            if (JsonParser.parseString(response.body()).getAsJsonObject().getAsJsonArray("jobs").size() > 0) {
                thread.interrupt();
                return true;
            }
            Thread.sleep(100);
        }
        return false;
    }

    private static JsonObject describe(PathObjectHierarchy hierarchy) {
        JsonObject out = new JsonObject();
        JsonArray objects = new JsonArray();
        for (PathObject object : hierarchy.getFlattenedObjectList(null)) {
            if (object.isRootObject())
                continue;
            JsonObject o = new JsonObject();
            o.addProperty("id", object.getID().toString());
            o.addProperty("type", object.getObjectType());
            o.addProperty("class", object.getPathClass() == null ? null : object.getPathClass().getName());
            o.addProperty("name", object.getName());
            JsonObject measurements = new JsonObject();
            for (String name : object.getMeasurementList().getNames())
                measurements.addProperty(name, object.getMeasurementList().get(name));
            o.add("measurements", measurements);
            o.add("geometry", object.getGeometryJson());
            objects.add(o);
        }
        out.add("objects", objects);
        out.addProperty("resolve_calls", hierarchy.resolveCalls);
        out.addProperty("changed_events", hierarchy.changedEvents);
        return out;
    }

    private static JsonArray rgb(Integer color) {
        JsonArray out = new JsonArray();
        int c = color == null ? 0 : color;
        out.add(ColorTools.red(c));
        out.add(ColorTools.green(c));
        out.add(ColorTools.blue(c));
        return out;
    }

    private static JsonArray names(List<PathClass> classes) {
        JsonArray out = new JsonArray();
        for (PathClass pathClass : classes)
            out.add(pathClass.getName());
        return out;
    }
}
