/*
 * tumls_analyze.groovy - TUMLS tissue segmentation of the current image, computed by `tumls-qp serve`.
 *
 * Run it on the open image (Automate > Shared scripts > tumls_analyze), or on many images with
 * the script editor's "Run > Run for project". It sends the image's file URI, size and pixel size
 * to the server, prints the progress, then imports the objects (tissue regions, representatives,
 * tiles with their uncertainty), colours their classes and adds them to the project's class list.
 * Running it again replaces this tool's earlier objects of the image (recognised by their
 * "TUMLS-QP job" measurement); objects you drew yourself are never touched.
 * "Kill running script" cancels the server's job. See groovy/README.md.
 *
 * QuPath 0.4 - 0.7. Uses Gson and java.net.http only (both ship with QuPath).
 */
import static qupath.lib.gui.scripting.QPEx.*

import com.google.gson.JsonArray
import com.google.gson.JsonElement
import com.google.gson.JsonNull
import com.google.gson.JsonObject
import com.google.gson.JsonParser
import com.google.gson.JsonPrimitive
import java.io.InterruptedIOException
import java.net.ConnectException
import java.net.URI
import java.net.http.HttpClient
import java.net.http.HttpHeaders
import java.net.http.HttpRequest
import java.net.http.HttpResponse
import java.nio.file.Files
import java.nio.file.Path
import java.nio.file.Paths
import java.nio.file.StandardCopyOption
import java.time.Duration
import java.util.zip.GZIPInputStream
import qupath.lib.common.ColorTools
import qupath.lib.io.PathIO
import qupath.lib.objects.PathObject
import qupath.lib.objects.hierarchy.PathObjectHierarchy

// ================================ settings ================================
// Where `tumls-qp serve` listens. The environment variable TUMLS_QP_SERVER overrides it.
def SERVER_URL = 'http://127.0.0.1:8765'
// The token of a server started with --token ('' for a server on this computer). TUMLS_QP_TOKEN overrides it.
def TOKEN = ''
// Pipeline options, nested by section as `tumls-qp config` prints them; [:] keeps the server's defaults.
// The environment variable TUMLS_QP_PARAMETERS (a JSON object) overrides them.
def PARAMETERS = [
    // tiles   : [tile_um: 256],   // tile side in µm (32 suits small images such as CMU-1-Small-Region)
    // clusters: [k: 4],           // fix the number of tissues (default: chosen from the dendrogram)
]
def POLL_SECONDS = 2               // how often to ask the server for progress (TUMLS_QP_POLL_SECONDS)
def TIMEOUT_MINUTES = 240          // give up, and cancel the server's job, after this long
def SAVE_REPORT = true             // save the run's PDF report (when it has one) in <project>/tumls-qp/
def EMBEDDING_COLOURS = false      // also import the tiles coloured by their embedding, a second tile layer
                                   // (TUMLS_QP_EMBEDDING_COLOURS=true|false overrides it)
// ==========================================================================

// The measurement that marks this tool's objects (the server adds it; keep in step with tumls_qp/outputs/qupath.py).
def TAG = 'TUMLS-QP job'
def API_VERSION = 1

def env = System.getenv()
SERVER_URL = (env['TUMLS_QP_SERVER'] ?: SERVER_URL).replaceAll('/+$', '')
TOKEN = env['TUMLS_QP_TOKEN'] ?: TOKEN
POLL_SECONDS = env['TUMLS_QP_POLL_SECONDS'] ? Double.parseDouble(env['TUMLS_QP_POLL_SECONDS']) : POLL_SECONDS
EMBEDDING_COLOURS = env['TUMLS_QP_EMBEDDING_COLOURS'] ?
        Boolean.parseBoolean(env['TUMLS_QP_EMBEDDING_COLOURS']) : EMBEDDING_COLOURS
JsonObject parameters = env['TUMLS_QP_PARAMETERS'] ?
        JsonParser.parseString(env['TUMLS_QP_PARAMETERS']).getAsJsonObject() :
        TumlsClient.toJson(PARAMETERS).getAsJsonObject()

long started = System.nanoTime()
def imageData = getCurrentImageData()
if (imageData == null)
    throw new IllegalStateException('TUMLS: open an image first (or use Run > Run for project)')
def server = imageData.getServer()
def uris = server.getURIs().collect { it.toString() }
if (uris.isEmpty())
    throw new IllegalStateException('TUMLS: this image has no file URI (e.g. a remote or generated image); ' +
            'tumls-qp analyses slide files that the server can read')
def calibration = server.getPixelCalibration()
Double pixelSize = calibration.hasPixelSizeMicrons() ? calibration.getAveragedPixelSizeMicrons() : null
if (pixelSize != null && (pixelSize.isNaN() || pixelSize <= 0))
    pixelSize = null
def entry = getProjectEntry()
String imageName = entry != null ? entry.getImageName() : server.getMetadata().getName()

def client = new TumlsClient(SERVER_URL, TOKEN)
def version = client.get('/version')
if (version.get('api').getAsInt() != API_VERSION)
    throw new IllegalStateException("TUMLS: the server speaks API ${version.get('api')}, this script ${API_VERSION}: " +
            'use the groovy/ scripts of the tumls-qp version the server runs')

def request = new JsonObject()
def uriArray = new JsonArray()
uris.each { uriArray.add(it) }
request.add('uris', uriArray)
request.addProperty('width', server.getWidth())
request.addProperty('height', server.getHeight())
request.add('pixel_size_um', pixelSize == null ? JsonNull.INSTANCE : new JsonPrimitive(pixelSize))
request.addProperty('image_name', imageName)
request.addProperty('server_type', server.getClass().getSimpleName())
request.add('parameters', parameters)

def job = client.post('/jobs', request)
String jobId = job.get('id').getAsString()
println "TUMLS: ${imageName}: job ${job.get('number').getAsInt()} submitted to ${SERVER_URL} (id ${jobId})"
job.getAsJsonArray('warnings').each { println "TUMLS: warning: ${it.getAsString()}" }

def cancelJob = { String reason ->
    Thread.interrupted()  // clear the interrupt so that this last request can go out
    try {
        client.delete("/jobs/${jobId}")
        println "TUMLS: ${imageName}: server job ${jobId} cancelled (${reason})"
    } catch (Exception e) {
        println "TUMLS: ${imageName}: could not cancel server job ${jobId}: ${e.getMessage()}"
    }
}

def objects
def classes
def previous
try {
    long deadline = System.nanoTime() + (long) (TIMEOUT_MINUTES * 60e9)
    String last = ''
    while (true) {
        String state = job.get('state').getAsString()
        String stage = TumlsClient.text(job, 'stage')
        String message = TumlsClient.text(job, 'message')
        String line = "${state} ${stage} ${Math.round(job.get('progress').getAsDouble() * 100)}% ${message}"
        if (line != last) {
            println "TUMLS: ${imageName}: [${stage}] ${Math.round(job.get('progress').getAsDouble() * 100)}% ${message}"
            last = line
        }
        if (state == 'succeeded')
            break
        if (state == 'failed')
            throw new RuntimeException("TUMLS: the analysis of ${imageName} failed: ${TumlsClient.text(job, 'error')}")
        if (state == 'cancelled')
            throw new RuntimeException("TUMLS: job ${jobId} was cancelled on the server")
        if (System.nanoTime() > deadline) {
            cancelJob("no result after ${TIMEOUT_MINUTES} minutes")
            throw new RuntimeException("TUMLS: gave up on ${imageName} after ${TIMEOUT_MINUTES} minutes")
        }
        Thread.sleep((long) (POLL_SECONDS * 1000))
        job = client.get("/jobs/${jobId}")
    }
    classes = client.get("/jobs/${jobId}/classes").getAsJsonArray('classes')
    def stream = client.openGeoJson("/jobs/${jobId}/geojson")
    try {
        objects = new ArrayList(PathIO.readObjectsFromGeoJSON(stream))
    } finally {
        stream.close()
    }
    if (EMBEDDING_COLOURS) {
        if (job.getAsJsonObject('links').has('embedding_colours')) {
            // Tagged like the other objects: a re-run replaces this layer too.
            stream = client.openGeoJson("/jobs/${jobId}/embedding-colours")
            try {
                objects.addAll(PathIO.readObjectsFromGeoJSON(stream))
            } finally {
                stream.close()
            }
        } else {
            println "TUMLS: ${imageName}: this job has no embedding-colour layer (output.embedding_colours = \"none\")"
        }
    }
} catch (InterruptedException | InterruptedIOException e) {
    cancelJob('script killed')
    throw e
}

// Replace this tool's earlier objects (and only those: they carry the TAG measurement); the new ones nest among
// themselves only (see TumlsClient.replaceLayer).
previous = TumlsClient.replaceLayer(imageData.getHierarchy(), TAG, objects)

// Colours: a GeoJSON colour only applies when QuPath creates a class, so set them here.
def pathClasses = []
classes.each {
    def info = it.getAsJsonObject()
    def rgb = info.getAsJsonArray('color')
    def pathClass = getPathClass(info.get('name').getAsString())
    pathClass.setColor(ColorTools.packRGB(rgb.get(0).getAsInt(), rgb.get(1).getAsInt(), rgb.get(2).getAsInt()))
    pathClasses << pathClass
}
def project = getProject()
if (project != null) {
    // Always set the list: QuPath then also saves the new colours of classes the project already had.
    def listed = new ArrayList(project.getPathClasses())
    listed.addAll(pathClasses.findAll { !listed.contains(it) })
    project.setPathClasses(listed)
}
def gui = getQuPath()
if (gui != null) {
    // The GUI's class list (which QuPath copies to the project) may only change on the JavaFX thread.
    Runnable addToGui = {
        def available = gui.getAvailablePathClasses()
        def missing = pathClasses.findAll { !available.contains(it) }
        if (!missing.isEmpty())
            available.addAll(missing)
    }
    Class.forName('javafx.application.Platform').getMethod('runLater', Runnable).invoke(null, addToGui)
}
fireHierarchyUpdate()

def result = job.getAsJsonObject('result')
double seconds = (System.nanoTime() - started) / 1e9
println String.format('TUMLS: %s: %d objects imported (%s tissues), %d earlier ones replaced, in %.1f s',
        imageName, objects.size(), TumlsClient.text(result, 'k'), previous.size(), seconds)
result.getAsJsonArray('warnings').each { println "TUMLS: warning: ${it.getAsString()}" }
String runDir = TumlsClient.text(result, 'run_dir')
if (result.get('report').getAsBoolean()) {
    println "TUMLS: PDF report: ${SERVER_URL}/jobs/${jobId}/report (on the server: ${runDir}/report.pdf)"
    if (SAVE_REPORT) {
        Path folder = project != null ? project.getPath().getParent().resolve('tumls-qp') :
                Paths.get(System.getProperty('user.home'), 'tumls-qp-reports')
        Path pdf = folder.resolve(imageName.replaceAll('[^A-Za-z0-9._-]+', '_') + '-tumls-report.pdf')
        client.download("/jobs/${jobId}/report", pdf)
        println "TUMLS: PDF report saved to ${pdf}"
    }
} else {
    println "TUMLS: this run has no PDF report; its files are in ${runDir} on the server"
}


/** The few HTTP calls the script makes, with the server's error messages passed on, and the import of a layer. */
class TumlsClient {
    final String base
    final String token
    HttpHeaders lastHeaders
    // HTTP/1.1: the JDK's default HTTP/2 upgrade (h2c) is refused by uvicorn and by many proxies.
    final HttpClient http = HttpClient.newBuilder()
            .version(HttpClient.Version.HTTP_1_1)
            .proxy(HttpClient.Builder.NO_PROXY)
            .connectTimeout(Duration.ofSeconds(10))
            .build()

    TumlsClient(String base, String token) {
        this.base = base
        this.token = token
    }

    HttpRequest.Builder request(String path) {
        def builder = HttpRequest.newBuilder(URI.create(base + path)).timeout(Duration.ofMinutes(5))
        if (token)
            builder.header('Authorization', 'Bearer ' + token)
        return builder
    }

    public <T> HttpResponse<T> send(HttpRequest request, HttpResponse.BodyHandler<T> handler) {
        try {
            return http.send(request, handler)
        } catch (ConnectException e) {
            throw new IOException("TUMLS: cannot reach the tumls-qp server at ${base}: start it with `tumls-qp serve` " +
                    '(see groovy/README.md) or correct SERVER_URL', e)
        }
    }

    JsonObject json(HttpRequest request) {
        HttpResponse<String> response = send(request, HttpResponse.BodyHandlers.ofString())
        check(response.statusCode(), response.body())
        return JsonParser.parseString(response.body()).getAsJsonObject()
    }

    JsonObject get(String path) {
        return json(request(path).header('Accept', 'application/json').GET().build())
    }

    JsonObject post(String path, JsonObject body) {
        return json(request(path).header('Content-Type', 'application/json')
                .POST(HttpRequest.BodyPublishers.ofString(body.toString())).build())
    }

    JsonObject delete(String path) {
        return json(request(path).DELETE().build())
    }

    /**
     * The response body of a GET, or of a POST of ``body`` (JSON), gunzipped when the server sent it
     * gzip-encoded. The response headers are kept in ``lastHeaders``.
     */
    InputStream openGeoJson(String path, JsonObject body = null) {
        def builder = request(path).header('Accept-Encoding', 'gzip')
        if (body == null)
            builder.GET()
        else
            builder.header('Content-Type', 'application/json').POST(HttpRequest.BodyPublishers.ofString(body.toString()))
        HttpResponse<InputStream> response = send(builder.build(), HttpResponse.BodyHandlers.ofInputStream())
        lastHeaders = response.headers()
        def encoding = response.headers().firstValue('Content-Encoding').orElse('')
        InputStream stream = encoding.equalsIgnoreCase('gzip') ? new GZIPInputStream(response.body()) : response.body()
        if (response.statusCode() != 200)
            check(response.statusCode(), new String(stream.readAllBytes(), 'UTF-8'))
        return stream
    }

    /** The same as bytes (small answers that are read twice: for their classes, then as objects). */
    byte[] geoJsonBytes(String path, JsonObject body = null) {
        InputStream stream = openGeoJson(path, body)
        try {
            return stream.readAllBytes()
        } finally {
            stream.close()
        }
    }

    /**
     * Replace a layer of this tool's objects in ``hierarchy``: remove the objects that carry the measurement ``tag``
     * (their other children, e.g. annotations QuPath put under them when they were drawn, move up, as QuPath does),
     * then add ``objects`` nested among themselves only: tiles, nuclei and representatives under the layer's own
     * regions, by QuPath's own rules (resolveHierarchy in a hierarchy holding this layer alone). The layer's
     * regions go directly under the image's root, and the image's hierarchy is never resolved, so that layers
     * never nest into each other or into the user's annotations, whatever order the scripts run in. Returns the
     * objects removed.
     */
    static List<PathObject> replaceLayer(PathObjectHierarchy hierarchy, String tag, Collection<PathObject> objects) {
        def previous = hierarchy.getFlattenedObjectList(null).findAll {
            !it.isRootObject() && it.getMeasurementList().containsKey(tag)
        }
        def layer = new PathObjectHierarchy()
        layer.addObjects(objects)
        layer.resolveHierarchy()
        // Non-deprecated in QuPath 0.4-0.7 (QP.removeObjects(Collection, boolean) is deprecated from 0.6).
        hierarchy.removeObjects(previous, true)
        hierarchy.addObjects(new ArrayList<PathObject>(layer.getRootObject().getChildObjects()))
        return previous
    }

    /** Stop unless the server speaks the script's API version. */
    void checkApi(int expected) {
        def version = get('/version')
        if (version.get('api').getAsInt() != expected)
            throw new IllegalStateException("TUMLS: the server speaks API ${version.get('api')}, this script " +
                    "${expected}: use the groovy/ scripts of the tumls-qp version the server runs")
    }

    /** The job ``jobId``, or else the newest succeeded analysis of the image file ``uri``; it must have succeeded. */
    JsonObject analysisJob(String uri, String jobId, String imageName) {
        JsonObject job
        if (jobId) {
            job = get("/jobs/${jobId}")
        } else {
            def jobs = get('/jobs?kind=analysis&state=succeeded&limit=1&image_uri=' +
                    URLEncoder.encode(uri, 'UTF-8')).getAsJsonArray('jobs')
            if (jobs.size() == 0)
                throw new IllegalStateException("TUMLS: ${imageName} has no finished analysis on the server at " +
                        "${base}: run tumls_analyze.groovy on it first (or set JOB_ID)")
            job = jobs.get(0).getAsJsonObject()
        }
        if (job.get('state').getAsString() != 'succeeded')
            throw new IllegalStateException("TUMLS: job ${text(job, 'id')} is ${text(job, 'state')}; wait until it " +
                    'has succeeded')
        return job
    }

    /** Class name -> packed RGB of the features of a GeoJSON FeatureCollection. */
    static Map<String, Integer> classColours(byte[] geojson) {
        def colours = new LinkedHashMap<String, Integer>()
        def features = JsonParser.parseString(new String(geojson, 'UTF-8')).getAsJsonObject().getAsJsonArray('features')
        features.each {
            def classification = it.getAsJsonObject().getAsJsonObject('properties').getAsJsonObject('classification')
            if (classification != null) {
                def rgb = classification.getAsJsonArray('color')
                colours[classification.get('name').getAsString()] = ColorTools.packRGB(rgb.get(0).getAsInt(),
                        rgb.get(1).getAsInt(), rgb.get(2).getAsInt())
            }
        }
        return colours
    }

    /** Save a response body to a file (written next to it, then renamed: never half-written). */
    Path download(String path, Path target) {
        Files.createDirectories(target.getParent())
        Path partial = target.resolveSibling(target.getFileName().toString() + '.part')
        HttpResponse<Path> response = send(request(path).GET().build(), HttpResponse.BodyHandlers.ofFile(partial))
        if (response.statusCode() != 200) {
            String body = new String(Files.readAllBytes(partial), 'UTF-8')
            Files.deleteIfExists(partial)
            check(response.statusCode(), body)
        }
        Files.move(partial, target, StandardCopyOption.REPLACE_EXISTING)
        return target
    }

    static void check(int status, String body) {
        if (status >= 200 && status < 300)
            return
        String detail = body
        try {
            detail = JsonParser.parseString(body).getAsJsonObject().get('detail').getAsString()
        } catch (Exception ignored) {
            // not a tumls-qp error body: show it as it is
        }
        throw new IOException("TUMLS: the server answered ${status}: ${detail}")
    }

    /** A member as text ('' when absent or null). */
    static String text(JsonObject object, String name) {
        JsonElement value = object == null ? null : object.get(name)
        return value == null || value.isJsonNull() ? '' : value.getAsString()
    }

    /** Gson tree of the settings' Groovy maps, lists, numbers, booleans and strings. */
    static JsonElement toJson(Object value) {
        if (value == null)
            return JsonNull.INSTANCE
        if (value instanceof Map) {
            def object = new JsonObject()
            value.each { k, v -> object.add(k.toString(), toJson(v)) }
            return object
        }
        if (value instanceof Collection) {
            def array = new JsonArray()
            value.each { array.add(toJson(it)) }
            return array
        }
        if (value instanceof Boolean)
            return new JsonPrimitive((Boolean) value)
        if (value instanceof Number)
            return new JsonPrimitive((Number) value)
        return new JsonPrimitive(value.toString())
    }
}
