/*
 * tumls_prototypes.groovy - prototype clusters of the current image's tiles, to name (step 1 of 3).
 *
 * Analyse the image with tumls_analyze.groovy first. This script asks the server to over-cluster the
 * image's tiles (k from the elbow of the within-cluster distance, unless K is set) and imports, per
 * cluster j, an annotation over its tiles and its most central tiles, all of class "Cluster j".
 * Name the clusters: give a cluster's region or any of its central tiles the class of the tissue it
 * shows (e.g. Tumor, Stroma), or "mixed" (or Ignore*) when it mixes tissues; leave the others as they
 * are. Then run tumls_save_dictionary.groovy (step 2), and tumls_apply_dictionary.groovy on new images
 * (step 3). Running this script again replaces the clusters (objects with the "TUMLS-QP prototypes"
 * measurement), names included, and nothing else. See groovy/README.md.
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
import java.nio.file.StandardCopyOption
import java.time.Duration
import java.util.zip.GZIPInputStream
import qupath.lib.common.ColorTools
import qupath.lib.io.GsonTools
import qupath.lib.io.PathIO
import qupath.lib.objects.PathObject
import qupath.lib.objects.hierarchy.PathObjectHierarchy

// ================================ settings ================================
// Where `tumls-qp serve` listens. The environment variable TUMLS_QP_SERVER overrides it.
def SERVER_URL = 'http://127.0.0.1:8765'
// The token of a server started with --token ('' for a server on this computer). TUMLS_QP_TOKEN overrides it.
def TOKEN = ''
// The analysis job whose tiles are clustered; '' = the newest succeeded analysis of this image. TUMLS_QP_JOB.
def JOB_ID = ''
// Number of clusters; null = from the elbow rule (2-50). TUMLS_QP_K overrides it.
Integer K = null
// Central tiles shown per cluster.
def CENTRAL_TILES = 10
// ==========================================================================

// The measurement that marks this script's objects (keep in step with tumls_qp/outputs/qupath.py).
def TAG = 'TUMLS-QP prototypes'
def API_VERSION = 1

def env = System.getenv()
SERVER_URL = (env['TUMLS_QP_SERVER'] ?: SERVER_URL).replaceAll('/+$', '')
TOKEN = env['TUMLS_QP_TOKEN'] ?: TOKEN
JOB_ID = env['TUMLS_QP_JOB'] ?: JOB_ID
K = env['TUMLS_QP_K'] ? Integer.parseInt(env['TUMLS_QP_K']) : K

long started = System.nanoTime()
def imageData = getCurrentImageData()
if (imageData == null)
    throw new IllegalStateException('TUMLS: open an image first')
def server = imageData.getServer()
def uris = server.getURIs().collect { it.toString() }
if (uris.size() != 1)
    throw new IllegalStateException('TUMLS: this image is not one slide file; tumls-qp works on slide files')
def entry = getProjectEntry()
String imageName = entry != null ? entry.getImageName() : server.getMetadata().getName()
def hierarchy = imageData.getHierarchy()

def client = new TumlsClient(SERVER_URL, TOKEN)
client.checkApi(API_VERSION)
def job = client.analysisJob(uris[0], JOB_ID, imageName)
String jobId = job.get('id').getAsString()
println "TUMLS: ${imageName}: clustering the tiles of analysis job ${job.get('number').getAsInt()} on ${SERVER_URL}"
def objects
Map<String, Integer> colours
try {
    byte[] answer = client.geoJsonBytes("/jobs/${jobId}/prototypes?t=${CENTRAL_TILES}" + (K == null ? '' : "&k=${K}"))
    colours = TumlsClient.classColours(answer)
    objects = PathIO.readObjectsFromGeoJSON(new ByteArrayInputStream(answer))
} catch (InterruptedException | InterruptedIOException e) {
    println "TUMLS: ${imageName}: interrupted; nothing was changed"
    throw e
}

// Replace the previous clusters (and only them: they carry the TAG measurement); the new ones nest among
// themselves only (see TumlsClient.replaceLayer).
def previous = TumlsClient.replaceLayer(hierarchy, TAG, objects)
// "Cluster j" classes are this script's: give them the clusters' colours (a GeoJSON colour only applies when
// QuPath creates the class).
colours.each { name, rgb -> getPathClass(name).setColor(rgb) }
fireHierarchyUpdate()

int k = colours.size()
double seconds = (System.nanoTime() - started) / 1e9
println String.format('TUMLS: %s: %d clusters imported (%d objects), %d earlier objects replaced, in %.1f s',
        imageName, k, objects.size(), previous.size(), seconds)
println 'TUMLS: name the clusters: give a cluster\'s region or a central tile the class of its tissue, or "mixed"; ' +
        'then run tumls_save_dictionary.groovy'


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
