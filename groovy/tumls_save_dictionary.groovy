/*
 * tumls_save_dictionary.groovy - save the names you gave the prototype clusters as a dictionary (step 2 of 3).
 *
 * After tumls_prototypes.groovy imported the clusters of this image and you gave some of them a class
 * (the class of a cluster's region or of any of its central tiles; "mixed" or Ignore* marks a cluster
 * that mixes tissues), this script sends the names to the server, which saves the labelled cluster
 * centres with the encoder they belong to as a dictionary (at least two classes; unnamed and mixed
 * clusters are dropped). Apply it to other images with tumls_apply_dictionary.groovy.
 * It changes nothing in the image. See groovy/README.md.
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
// A name for the dictionary (tumls_apply_dictionary.groovy can pick it by name). TUMLS_QP_DICTIONARY_NAME.
def DICTIONARY_NAME = ''
// ==========================================================================

// The measurement that marks the clusters tumls_prototypes.groovy imported (see tumls_qp/outputs/qupath.py).
def TAG = 'TUMLS-QP prototypes'
def API_VERSION = 1

def env = System.getenv()
SERVER_URL = (env['TUMLS_QP_SERVER'] ?: SERVER_URL).replaceAll('/+$', '')
TOKEN = env['TUMLS_QP_TOKEN'] ?: TOKEN
DICTIONARY_NAME = env['TUMLS_QP_DICTIONARY_NAME'] ?: DICTIONARY_NAME

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

def clusters = hierarchy.getFlattenedObjectList(null).findAll {
    !it.isRootObject() && it.getMeasurementList().containsKey(TAG)
}
if (clusters.isEmpty())
    throw new IllegalStateException("TUMLS: ${imageName} holds no prototype clusters: run tumls_prototypes.groovy, " +
            'name the clusters, then run this script')
def numbers = clusters.collect { (int) it.getMeasurementList().get(TAG) }.unique()
def ks = clusters.collect { (int) it.getMeasurementList().get('Prototype clusters') }.unique()
if (numbers.size() != 1 || ks.size() != 1)
    throw new IllegalStateException("TUMLS: ${imageName} holds clusters of several runs of tumls_prototypes.groovy " +
            '(delete them and run it again)')
int k = ks[0]

// Each cluster's name: the class given to its region or central tiles ("Cluster j" = not named).
def given = [:].withDefault { [] as Set }
clusters.each {
    int j = (int) it.getMeasurementList().get('Prototype')
    String name = it.getPathClass() == null ? null : it.getPathClass().toString()
    if (name != null && name != "Cluster ${j}".toString())
        given[j] << (name.equalsIgnoreCase('mixed') || name == 'Ignore*' ? 'mixed' : name)
}
def conflicts = given.findAll { j, names -> names.size() > 1 }
if (!conflicts.isEmpty())
    throw new IllegalArgumentException('TUMLS: clusters with more than one name: ' + conflicts.collect { j, names ->
        "cluster ${j}: ${names.join(' and ')}" }.join('; ') + '. Give all objects of a cluster the same class')
def names = new JsonObject()
def colors = new JsonObject()
(1..k).each { j ->
    String name = given[j] ? given[j].iterator().next() : null
    names.add(j.toString(), name == null ? JsonNull.INSTANCE : new JsonPrimitive(name))
    if (name != null && name != 'mixed' && !colors.has(name)) {
        Integer rgb = getPathClass(name).getColor()
        if (rgb != null) {
            def colour = new JsonArray()
            colour.add(ColorTools.red(rgb))
            colour.add(ColorTools.green(rgb))
            colour.add(ColorTools.blue(rgb))
            colors.add(name, colour)
        }
    }
}

def client = new TumlsClient(SERVER_URL, TOKEN)
client.checkApi(API_VERSION)
// The clusters carry the number of the analysis job they were made from.
def job = client.get('/jobs?kind=analysis&state=succeeded&limit=1000&image_uri=' + URLEncoder.encode(uris[0], 'UTF-8'))
        .getAsJsonArray('jobs').collect { it.getAsJsonObject() }.find { it.get('number').getAsInt() == numbers[0] }
if (job == null)
    throw new IllegalStateException("TUMLS: the clusters come from analysis job ${numbers[0]}, which the server at " +
            "${SERVER_URL} no longer has for ${imageName}: run tumls_prototypes.groovy again and name the clusters")
def request = new JsonObject()
request.addProperty('job', job.get('id').getAsString())
request.addProperty('k', k)
request.add('names', names)
request.add('colors', colors)
if (DICTIONARY_NAME)
    request.addProperty('name', DICTIONARY_NAME)
def saved = client.post('/dictionaries', request)
def classes = saved.getAsJsonArray('classes').collect {
    "${it.getAsJsonObject().get('name').getAsString()} (${it.getAsJsonObject().get('prototypes').getAsInt()})"
}
def naming = saved.getAsJsonObject('naming')
println "TUMLS: ${imageName}: dictionary ${saved.get('id').getAsString()}" +
        (DICTIONARY_NAME ? " ('${DICTIONARY_NAME}')" : '') + " saved: ${classes.join(', ')} cluster(s); " +
        "dropped: mixed ${naming.get('mixed')}, unnamed ${naming.get('unnamed')}"
println 'TUMLS: apply it to other images with tumls_apply_dictionary.groovy'


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
