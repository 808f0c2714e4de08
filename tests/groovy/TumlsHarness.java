import com.google.gson.Gson;
import com.google.gson.GsonBuilder;
import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParser;
import groovy.lang.Binding;
import groovy.lang.GroovyShell;
import groovy.lang.Script;
import java.awt.image.BufferedImage;
import java.io.ByteArrayInputStream;
import java.io.File;
import java.lang.reflect.Constructor;
import java.lang.reflect.Field;
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
import java.util.Collection;
import java.util.HashMap;
import java.util.IdentityHashMap;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;
import javafx.application.Platform;
import org.codehaus.groovy.runtime.InvokerHelper;
import qupath.lib.common.ColorTools;
import qupath.lib.gui.QuPathGUI;
import qupath.lib.images.ImageData;
import qupath.lib.images.servers.ImageServer;
import qupath.lib.images.servers.ImageServerMetadata;
import qupath.lib.io.GsonTools;
import qupath.lib.io.PathIO;
import qupath.lib.objects.PathObject;
import qupath.lib.objects.classes.PathClass;
import qupath.lib.objects.hierarchy.PathObjectHierarchy;
import qupath.lib.projects.Project;
import qupath.lib.projects.ProjectImageEntry;
import qupath.lib.scripting.QP;

/**
 * Runs scripts of groovy/ against the QuPath stand-ins the way QuPath's "Run for project" does: one image at a
 * time, each on a fresh script thread that QP.setBatchProjectAndImage points at a fresh ImageData, hierarchies
 * kept per project entry. Then it dumps the hierarchies (every object with its parent), the classes and the
 * project as JSON. The harness only uses the stand-ins' QuPath API, except for making QuPath's GUI singleton
 * (private in QuPath too), which it does by reflection.
 *
 * Usage: java -cp ... TumlsHarness config.json dump.json
 * config: {"script": path, "project_file": path or null, "gui": bool,
 *          "classes_before": [{"name", "color"}],
 *          "entries": [{"name", "uri", "width", "height", "pixel_size_um" (or null), "user_objects": n,
 *                       "seeds": [{"class", "color", "geometry"}]}],
 *          "runs": [entry index, or {"entry": index, "script": path, "reclass": {"old class": "new class"},
 *                   "select_classes": ["class", ...]}, or {"entry": index, "resolve": true}, ...],
 *          "interrupt": {"server": url, "run": index} or null,
 *          "markers": ["measurement that marks a layer", ...]}
 * User objects and seeds are drawn as QuPath's GUI adds a drawn annotation (insertPathObject). A run's "reclass"
 * changes the class of the entry's objects before the run (a user naming clusters); "select_classes" selects the
 * annotations of those classes; "resolve" is the user's Objects > Annotations > Resolve hierarchy. After each run,
 * "nesting" counts the objects of the entry by "layer>parent's layer", a layer being the first of "markers" that an
 * object has as a measurement ("user" for none, "root" for the image's root).
 */
public class TumlsHarness {
    public static void main(String[] args) throws Exception {
        JsonObject config = JsonParser.parseString(Files.readString(Paths.get(args[0]))).getAsJsonObject();
        Path dumpPath = Paths.get(args[1]);
        Map<String, Class<? extends Script>> compiled = new HashMap<>();

        HarnessProject project = null;
        if (config.has("project_file") && !config.get("project_file").isJsonNull())
            project = new HarnessProject(Paths.get(config.get("project_file").getAsString()));
        QuPathGUI gui = config.has("gui") && config.get("gui").getAsBoolean() ? startGui() : null;
        List<PathClass> before = new ArrayList<>();
        if (config.has("classes_before")) {
            for (JsonElement element : config.getAsJsonArray("classes_before")) {
                JsonObject info = element.getAsJsonObject();
                before.add(PathClass.fromString(info.get("name").getAsString(), rgb(info.getAsJsonArray("color"))));
            }
            if (project != null)
                project.setPathClasses(before);
            if (gui != null)
                onFxThread(() -> gui.getAvailablePathClasses().addAll(before));
        }

        JsonArray entries = config.getAsJsonArray("entries");
        List<PathObjectHierarchy> hierarchies = new ArrayList<>();
        List<AtomicLong> lastEvent = new ArrayList<>();
        for (JsonElement element : entries) {
            JsonObject entry = element.getAsJsonObject();
            PathObjectHierarchy hierarchy = new PathObjectHierarchy();
            AtomicLong last = new AtomicLong();
            hierarchy.addListener(event -> last.set(System.nanoTime()));
            int userObjects = entry.has("user_objects") ? entry.get("user_objects").getAsInt() : 0;
            for (int i = 0; i < userObjects; i++) {
                int x = 20 * i;  // side by side: a drawn shape inside another would be inserted under it
                draw(hierarchy, "{\"type\":\"Feature\",\"geometry\":{\"type\":\"Polygon\",\"coordinates\":"
                        + "[[[" + x + ",0],[" + (x + 10) + ",0],[" + (x + 10) + ",10],[" + x + ",0]]]},\"properties\":"
                        + "{\"objectType\":\"annotation\",\"classification\":\"Tumor\","
                        + "\"measurements\":{\"Drawn by hand\":" + i + "}}}");
            }
            if (entry.has("seeds")) {
                for (JsonElement seedElement : entry.getAsJsonArray("seeds")) {
                    JsonObject seed = seedElement.getAsJsonObject();
                    JsonObject classification = new JsonObject();
                    classification.add("name", seed.get("class"));
                    classification.add("color", seed.get("color"));
                    JsonObject properties = new JsonObject();
                    properties.addProperty("objectType", "annotation");
                    properties.add("classification", classification);
                    JsonObject feature = new JsonObject();
                    feature.addProperty("type", "Feature");
                    feature.add("geometry", seed.get("geometry"));
                    feature.add("properties", properties);
                    draw(hierarchy, feature.toString());
                }
            }
            hierarchies.add(hierarchy);
            lastEvent.add(last);
        }

        List<String> markers = new ArrayList<>();
        if (config.has("markers"))
            config.getAsJsonArray("markers").forEach(m -> markers.add(m.getAsString()));
        JsonObject interrupt = config.has("interrupt") && !config.get("interrupt").isJsonNull()
                ? config.getAsJsonObject("interrupt") : null;
        JsonArray runs = new JsonArray();
        int index = 0;
        for (JsonElement runEntry : config.getAsJsonArray("runs")) {
            JsonObject runConfig = runEntry.isJsonObject() ? runEntry.getAsJsonObject() : new JsonObject();
            int e = runEntry.isJsonObject() ? runConfig.get("entry").getAsInt() : runEntry.getAsInt();
            PathObjectHierarchy hierarchy = hierarchies.get(e);
            JsonObject run = new JsonObject();
            run.addProperty("entry", e);
            if (runConfig.has("resolve") && runConfig.get("resolve").getAsBoolean()) {
                hierarchy.resolveHierarchy();
                run.addProperty("outcome", "ok");
                run.add("nesting", nesting(hierarchy, markers));
                runs.add(run);
                index++;
                continue;
            }
            String scriptPath = runConfig.has("script") ? runConfig.get("script").getAsString()
                    : config.get("script").getAsString();
            if (!compiled.containsKey(scriptPath))
                compiled.put(scriptPath, new GroovyShell().parse(new File(scriptPath)).getClass());
            Class<? extends Script> scriptClass = compiled.get(scriptPath);
            if (runConfig.has("reclass")) {
                JsonObject reclass = runConfig.getAsJsonObject("reclass");
                for (PathObject object : hierarchy.getFlattenedObjectList(null)) {
                    PathClass pathClass = object.getPathClass();
                    if (pathClass != null && reclass.has(pathClass.toString()))
                        object.setPathClass(PathClass.fromString(reclass.get(pathClass.toString()).getAsString()));
                }
            }
            List<PathObject> selected = new ArrayList<>();
            if (runConfig.has("select_classes")) {
                Set<String> names = new LinkedHashSet<>();
                for (JsonElement name : runConfig.getAsJsonArray("select_classes"))
                    names.add(name.getAsString());
                for (PathObject object : hierarchy.getAnnotationObjects())
                    if (object.getPathClass() != null && names.contains(object.getPathClass().toString()))
                        selected.add(object);
            }
            hierarchy.getSelectionModel().setSelectedObjects(selected, null);
            JsonObject entry = entries.get(e).getAsJsonObject();
            ImageData<BufferedImage> imageData = new ImageData<>(new SlideFileServer(entry), hierarchy);
            if (project != null)
                project.entries.put(imageData, entry.get("name").getAsString());

            HarnessProject currentProject = project;
            AtomicReference<Throwable> failure = new AtomicReference<>();
            long start = System.nanoTime();
            Thread thread = new Thread(() -> {
                QP.setBatchProjectAndImage(currentProject, imageData);
                try {
                    InvokerHelper.createScript(scriptClass, new Binding()).run();
                } catch (Throwable t) {
                    failure.set(t);
                } finally {
                    QP.resetBatchProjectAndImage();
                }
            }, "tumls-script-" + index);
            thread.start();
            boolean interrupted = false;
            if (interrupt != null && interrupt.get("run").getAsInt() == index)
                interrupted = interruptWhenRunning(thread, interrupt.get("server").getAsString());
            thread.join();

            run.addProperty("script", scriptPath);
            run.addProperty("interrupted", interrupted);
            Throwable t = failure.get();
            run.addProperty("outcome", t == null ? "ok" : t.getClass().getName());
            run.addProperty("message", t == null ? "" : String.valueOf(t.getMessage()));
            long changed = lastEvent.get(e).get();
            run.addProperty("seconds_to_objects", changed < start ? -1 : (changed - start) / 1e9);
            run.addProperty("seconds", (System.nanoTime() - start) / 1e9);
            run.addProperty("main_thread_sees_image", QP.getCurrentImageData() != null);
            run.add("nesting", nesting(hierarchy, markers));
            runs.add(run);
            index++;
        }
        onFxThread(() -> {});  // what the scripts queued on the JavaFX thread has run

        JsonObject dump = new JsonObject();
        dump.add("runs", runs);
        JsonArray images = new JsonArray();
        Set<PathClass> classes = new LinkedHashSet<>(before);
        for (PathObjectHierarchy hierarchy : hierarchies)
            images.add(describe(hierarchy, classes));
        dump.add("images", images);
        if (project != null) {
            dump.add("project_classes", names(project.getPathClasses()));
            classes.addAll(project.getPathClasses());
            Path classesJson = project.getPath().getParent().resolve("classifiers").resolve("classes.json");
            if (Files.exists(classesJson))
                dump.add("classes_json", JsonParser.parseString(Files.readString(classesJson)));
        }
        if (gui != null) {
            List<PathClass> guiClasses = new ArrayList<>();
            onFxThread(() -> guiClasses.addAll(gui.getAvailablePathClasses()));
            dump.add("gui_classes", names(guiClasses));
            classes.addAll(guiClasses);
        }
        JsonObject colours = new JsonObject();
        for (PathClass pathClass : classes)
            colours.add(pathClass.toString(), rgbArray(pathClass.getColor()));
        dump.add("class_colors", colours);
        Gson gson = new GsonBuilder().serializeSpecialFloatingPointValues().create();
        Files.writeString(dumpPath, gson.toJson(dump), StandardCharsets.UTF_8);
    }

    /** QuPath's GUI singleton: made by QuPath itself at start-up, so by reflection here. */
    private static QuPathGUI startGui() throws Exception {
        Constructor<QuPathGUI> constructor = QuPathGUI.class.getDeclaredConstructor();
        constructor.setAccessible(true);
        QuPathGUI gui = constructor.newInstance();
        Field instance = QuPathGUI.class.getDeclaredField("instance");
        instance.setAccessible(true);
        instance.set(null, gui);
        return gui;
    }

    private static void onFxThread(Runnable task) throws InterruptedException {
        CountDownLatch done = new CountDownLatch(1);
        Platform.runLater(() -> {
            try {
                task.run();
            } finally {
                done.countDown();
            }
        });
        if (!done.await(60, TimeUnit.SECONDS))
            throw new IllegalStateException("the JavaFX thread did not answer");
    }

    /** An annotation drawn in the viewer: QuPath's GUI inserts it where it fits (insertPathObject). */
    private static void draw(PathObjectHierarchy hierarchy, String feature) throws Exception {
        for (PathObject object : PathIO.readObjectsFromGeoJSON(
                new ByteArrayInputStream(feature.getBytes(StandardCharsets.UTF_8))))
            hierarchy.insertPathObject(object, true);
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

    private static JsonObject nesting(PathObjectHierarchy hierarchy, List<String> markers) {
        Map<String, Integer> counts = new java.util.TreeMap<>();
        for (PathObject object : hierarchy.getFlattenedObjectList(null))
            if (!object.isRootObject())
                counts.merge(layer(object, markers) + ">" + layer(object.getParent(), markers), 1, Integer::sum);
        JsonObject out = new JsonObject();
        counts.forEach(out::addProperty);
        return out;
    }

    private static String layer(PathObject object, List<String> markers) {
        if (object.isRootObject())
            return "root";
        for (String marker : markers)
            if (object.getMeasurementList().containsKey(marker))
                return marker;
        return "user";
    }

    private static JsonObject describe(PathObjectHierarchy hierarchy, Set<PathClass> classes) {
        JsonObject out = new JsonObject();
        JsonArray objects = new JsonArray();
        Gson gson = GsonTools.getInstance();
        for (PathObject object : hierarchy.getFlattenedObjectList(null)) {
            if (object.isRootObject())
                continue;
            JsonObject o = new JsonObject();
            o.addProperty("id", object.getID().toString());
            o.addProperty("type", object.isCell() ? "cell" : object.isTile() ? "tile"
                    : object.isDetection() ? "detection" : "annotation");
            o.addProperty("class", object.getPathClass() == null ? null : object.getPathClass().toString());
            if (object.getPathClass() != null)
                classes.add(object.getPathClass());
            o.addProperty("name", object.getName());
            PathObject parent = object.getParent();
            o.addProperty("parent", parent == null || parent.isRootObject() ? null : parent.getID().toString());
            JsonObject measurements = new JsonObject();
            for (String name : object.getMeasurementList().keySet())
                measurements.addProperty(name, object.getMeasurementList().get(name));
            o.add("measurements", measurements);
            // QuPath's ROI adapter writes with JsonWriter.jsonValue: through a string, never a Gson tree.
            o.add("geometry", JsonParser.parseString(gson.toJson(object.getROI())));
            objects.add(o);
        }
        out.add("objects", objects);
        return out;
    }

    private static int rgb(JsonArray rgb) {
        return ColorTools.packRGB(rgb.get(0).getAsInt(), rgb.get(1).getAsInt(), rgb.get(2).getAsInt());
    }

    private static JsonArray rgbArray(Integer color) {
        JsonArray out = new JsonArray();
        int c = color == null ? 0 : color;
        out.add(ColorTools.red(c));
        out.add(ColorTools.green(c));
        out.add(ColorTools.blue(c));
        return out;
    }

    private static JsonArray names(Collection<PathClass> classes) {
        JsonArray out = new JsonArray();
        for (PathClass pathClass : classes)
            out.add(pathClass.toString());
        return out;
    }

    /** A slide file as QuPath's image server shows it (the harness's own ImageServer, not one of QuPath's). */
    static final class SlideFileServer implements ImageServer<BufferedImage> {
        private final URI uri;
        private final ImageServerMetadata metadata;

        SlideFileServer(JsonObject entry) {
            this.uri = URI.create(entry.get("uri").getAsString());
            ImageServerMetadata.Builder builder = new ImageServerMetadata.Builder()
                    .name(entry.get("name").getAsString())
                    .width(entry.get("width").getAsInt()).height(entry.get("height").getAsInt());
            if (!entry.get("pixel_size_um").isJsonNull()) {
                double size = entry.get("pixel_size_um").getAsDouble();
                builder.pixelSizeMicrons(size, size);
            }
            this.metadata = builder.build();
        }

        @Override
        public String getPath() { return "SlideFileServer: " + uri; }

        @Override
        public Collection<URI> getURIs() { return List.of(uri); }

        @Override
        public int getWidth() { return metadata.getWidth(); }

        @Override
        public int getHeight() { return metadata.getHeight(); }

        @Override
        public String getServerType() { return "Slide file"; }

        @Override
        public ImageServerMetadata getMetadata() { return metadata; }

        @Override
        public void close() {}
    }

    /**
     * A project with QuPath's DefaultProject rules for the class list: setPathClasses replaces the list unless the
     * new one has the same size without holding all the old classes, and always rewrites classifiers/classes.json
     * (once the project file exists).
     */
    static final class HarnessProject implements Project<BufferedImage> {
        private final Path path;
        private final List<PathClass> pathClasses = new ArrayList<>();
        final Map<ImageData<BufferedImage>, String> entries = new IdentityHashMap<>();

        HarnessProject(Path path) throws Exception {
            this.path = path;
            Files.createDirectories(path.getParent());
            Files.writeString(path, "{}");
        }

        @Override
        public Path getPath() { return path; }

        @Override
        public List<PathClass> getPathClasses() { return List.copyOf(pathClasses); }

        @Override
        public boolean setPathClasses(Collection<? extends PathClass> classes) {
            if (pathClasses.size() != classes.size() || pathClasses.containsAll(classes)) {
                pathClasses.clear();
                pathClasses.addAll(classes);
            }
            JsonArray array = new JsonArray();
            for (PathClass pathClass : pathClasses) {
                JsonObject item = new JsonObject();
                item.addProperty("name", pathClass.toString());
                item.addProperty("color", pathClass.getColor());
                array.add(item);
            }
            JsonObject json = new JsonObject();
            json.add("pathClasses", array);
            try {
                Path folder = Files.createDirectories(path.getParent().resolve("classifiers"));
                Files.writeString(folder.resolve("classes.json"), GsonTools.getInstance(true).toJson(json));
            } catch (java.io.IOException e) {
                throw new java.io.UncheckedIOException(e);
            }
            return true;
        }

        @Override
        public ProjectImageEntry<BufferedImage> getEntry(ImageData<BufferedImage> imageData) {
            String name = entries.get(imageData);
            return name == null ? null : () -> name;
        }

        @Override
        public void syncChanges() {}
    }
}
