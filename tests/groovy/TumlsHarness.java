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
import java.util.HashMap;
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
 * Runs a script of groovy/ against the QuPath stand-ins, the way QuPath's "Run for project" does
 * (one image at a time, fresh ImageData each, hierarchies kept per project entry), and dumps what the
 * hierarchies, the classes and the project hold afterwards as JSON.
 *
 * Usage: java -cp ... TumlsHarness config.json dump.json
 * config: {"script": path, "project_file": path or null, "gui": bool,
 *          "classes_before": [{"name", "color"}], "entries": [{"name", "uri", "width", "height",
 *          "pixel_size_um" (or null), "user_objects": n, "seeds": [{"class", "color", "geometry"}]}],
 *          "runs": [entry index, or {"entry": index, "script": path, "reclass": {"old class": "new class"},
 *                   "select_classes": ["class", ...]}, ...],
 *          "interrupt": {"server": url, "run": index} or null}
 * A run's "reclass" changes the class of the entry's objects before the run (as a user naming clusters would);
 * "select_classes" selects the annotations of those classes.
 */
public class TumlsHarness {
    public static void main(String[] args) throws Exception {
        JsonObject config = JsonParser.parseString(Files.readString(Paths.get(args[0]))).getAsJsonObject();
        Path dumpPath = Paths.get(args[1]);
        Map<String, Class<? extends Script>> compiled = new HashMap<>();

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
            if (element.getAsJsonObject().has("seeds")) {
                for (JsonElement seedElement : element.getAsJsonObject().getAsJsonArray("seeds")) {
                    JsonObject seed = seedElement.getAsJsonObject();
                    PathObject drawn = new PathObject(UUID.randomUUID(), "annotation", seed.get("geometry"));
                    JsonArray rgb = seed.getAsJsonArray("color");
                    drawn.setPathClass(PathClass.fromString(seed.get("class").getAsString(),
                            ColorTools.packRGB(rgb.get(0).getAsInt(), rgb.get(1).getAsInt(), rgb.get(2).getAsInt())));
                    hierarchy.addObjects(List.of(drawn));
                }
            }
            hierarchies.add(hierarchy);
        }

        JsonObject interrupt = config.has("interrupt") && !config.get("interrupt").isJsonNull()
                ? config.getAsJsonObject("interrupt") : null;
        JsonArray runs = new JsonArray();
        int index = 0;
        for (JsonElement runEntry : config.getAsJsonArray("runs")) {
            JsonObject runConfig = runEntry.isJsonObject() ? runEntry.getAsJsonObject() : new JsonObject();
            int e = runEntry.isJsonObject() ? runConfig.get("entry").getAsInt() : runEntry.getAsInt();
            String scriptPath = runConfig.has("script") ? runConfig.get("script").getAsString()
                    : config.get("script").getAsString();
            if (!compiled.containsKey(scriptPath))
                compiled.put(scriptPath, new GroovyShell().parse(new File(scriptPath)).getClass());
            Class<? extends Script> scriptClass = compiled.get(scriptPath);
            PathObjectHierarchy current = hierarchies.get(e);
            if (runConfig.has("reclass")) {
                JsonObject reclass = runConfig.getAsJsonObject("reclass");
                for (PathObject object : current.getFlattenedObjectList(null)) {
                    PathClass pathClass = object.getPathClass();
                    if (pathClass != null && reclass.has(pathClass.getName()))
                        object.setPathClass(PathClass.fromString(reclass.get(pathClass.getName()).getAsString()));
                }
            }
            List<PathObject> selected = new ArrayList<>();
            if (runConfig.has("select_classes")) {
                List<String> names = new ArrayList<>();
                for (JsonElement name : runConfig.getAsJsonArray("select_classes"))
                    names.add(name.getAsString());
                for (PathObject object : current.getFlattenedObjectList(null))
                    if (object.getPathClass() != null && names.contains(object.getPathClass().getName()))
                        selected.add(object);
            }
            current.getSelectionModel().setSelectedObjects(selected, null);
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
            run.addProperty("script", scriptPath);
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
