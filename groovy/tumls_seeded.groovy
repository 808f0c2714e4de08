/**
 * tumls-qp: seeded iterative clustering from QuPath (QuPath 0.4 - 0.7).
 *
 * Draw a few annotations of two or more classes on the tissue (clicks, scribbles or small
 * polygons, e.g. "Tumor" and "Benign"), then run this script. It sends them to the tumls-qp
 * server, which classifies every tile of the image from the embeddings it cached when the
 * image was analysed (no retraining; seconds), and imports the answer:
 *   - one annotation per class, "<class> (SIC)", the union of its tiles (Area um^2, Tile count,
 *     Mean SIC confidence);
 *   - one tile object per tile with its class and "SIC confidence" (Measure > Show measurement maps).
 * A re-run replaces the previous answer. Seeds are the selected annotations if any are selected,
 * otherwise every classified annotation that is not a tumls-qp result.
 *
 * Contract (see tumls_qp.labelling.seeded_classification in the Python package):
 *   POST {SERVER}/jobs/{JOB_ID}/seeded
 *   {"seeds": [{"class": "Tumor", "color": [r, g, b], "geometry": <GeoJSON geometry, level-0 px>}]}
 *   -> 200 with a GeoJSON FeatureCollection; 4xx with {"detail": "..."} for bad seeds (one class only,
 *      a seed outside the analysed tissue, ...).
 * The endpoint belongs to the tumls-qp server; SERVER and the way JOB_ID is found follow its
 * conventions and may need adjusting to them.
 */

import com.google.gson.JsonArray
import com.google.gson.JsonObject
import com.google.gson.JsonParser
import java.net.URI
import java.net.http.HttpClient
import java.net.http.HttpRequest
import java.net.http.HttpResponse
import java.time.Duration
import qupath.lib.common.ColorTools
import qupath.lib.io.GsonTools
import qupath.lib.io.PathIO

// --- settings ------------------------------------------------------------------------------------------------
def SERVER = System.getenv("TUMLS_QP_SERVER") ?: "http://127.0.0.1:8000"
// The analysis job of this image. Empty: the job id that the analysis script stored in the project
// entry's metadata under "tumls-qp.job".
def JOB_ID = ""
def TIMEOUT_S = 120
// Measurements that mark objects tumls-qp made (never seeds; SIC results are replaced on a re-run).
def SIC_MARKERS = ["SIC confidence", "Mean SIC confidence"]
def TUMLS_MARKERS = SIC_MARKERS + ["Mean uncertainty", "Uncertainty", "Rank", "Prototype",
                                   "Mean Dictionary confidence", "Dictionary confidence", "Embedding 1"]

// --- the image and its job -----------------------------------------------------------------------------------
def imageData = getCurrentImageData()
if (imageData == null)
    throw new IllegalStateException("tumls-qp: open an image first")
def hierarchy = imageData.getHierarchy()
if (!JOB_ID) {
    def entry = getProjectEntry()
    try {
        JOB_ID = entry?.getMetadataValue("tumls-qp.job") ?: ""
    } catch (MissingMethodException ignored) {
        JOB_ID = ""
    }
}
if (!JOB_ID)
    throw new IllegalStateException("tumls-qp: no analysis job for this image. Analyse it with tumls-qp first, " +
            "or set JOB_ID at the top of this script.")

// --- the seeds -----------------------------------------------------------------------------------------------
def isTumlsResult = { obj -> TUMLS_MARKERS.any { obj.getMeasurementList().containsKey(it) } }
def selected = hierarchy.getSelectionModel().getSelectedObjects().findAll { it.isAnnotation() }
def candidates = selected ? selected : getAnnotationObjects()
def seeds = candidates.findAll { it.getPathClass() != null && it.getROI() != null && !isTumlsResult(it) }
def classNames = seeds.collect { it.getPathClass().toString() }.unique()
if (seeds.isEmpty())
    throw new IllegalArgumentException("tumls-qp: no seeds. Draw annotations on the tissue and give them a class " +
            "(e.g. Tumor and Benign).")
if (classNames.size() < 2)
    throw new IllegalArgumentException("tumls-qp: seeds of one class only (" + classNames[0] + "); add at least one " +
            "annotation of another class.")

def gson = GsonTools.getInstance()
def array = new JsonArray()
for (seed in seeds) {
    def pathClass = seed.getPathClass()
    def item = new JsonObject()
    item.addProperty("class", pathClass.toString())
    Integer rgb = pathClass.getColor()
    if (rgb != null) {
        def colour = new JsonArray()
        colour.add(ColorTools.red(rgb)); colour.add(ColorTools.green(rgb)); colour.add(ColorTools.blue(rgb))
        item.add("color", colour)
    }
    item.add("geometry", gson.toJsonTree(seed.getROI()))
    array.add(item)
}
def body = new JsonObject()
body.add("seeds", array)

// --- the request ---------------------------------------------------------------------------------------------
def client = HttpClient.newBuilder()
        .proxy(HttpClient.Builder.NO_PROXY)
        .connectTimeout(Duration.ofSeconds(10))
        .build()
def request = HttpRequest.newBuilder(URI.create(SERVER + "/jobs/" + URLEncoder.encode(JOB_ID, "UTF-8") + "/seeded"))
        .timeout(Duration.ofSeconds(TIMEOUT_S))
        .header("Content-Type", "application/json")
        .POST(HttpRequest.BodyPublishers.ofString(gson.toJson(body)))
        .build()
println "tumls-qp: sending ${seeds.size()} seed(s) of ${classNames.join(', ')} to ${SERVER} (job ${JOB_ID})"
HttpResponse<byte[]> response
try {
    response = client.send(request, HttpResponse.BodyHandlers.ofByteArray())
} catch (InterruptedException e) {
    // "Kill running script": the request is short and has nothing to cancel on the server; stop here.
    println "tumls-qp: interrupted; nothing was changed"
    throw e
} catch (IOException e) {
    throw new IOException("tumls-qp: cannot reach the server at ${SERVER} (${e.getMessage()}). Is `tumls-qp serve` " +
            "running?", e)
}
if (response.statusCode() != 200) {
    def text = new String(response.body(), "UTF-8")
    def detail = text
    try {
        def parsed = JsonParser.parseString(text)
        if (parsed.isJsonObject() && parsed.getAsJsonObject().has("detail"))
            detail = parsed.getAsJsonObject().get("detail").toString()
    } catch (Exception ignored) {
    }
    throw new IllegalArgumentException("tumls-qp: the server refused the seeds (HTTP ${response.statusCode()}): ${detail}")
}

// --- import: replace the previous answer ---------------------------------------------------------------------
def objects = PathIO.readObjectsFromGeoJSON(new ByteArrayInputStream(response.body()))
def previous = hierarchy.getFlattenedObjectList(null).findAll { obj ->
    !obj.isRootObject() && SIC_MARKERS.any { obj.getMeasurementList().containsKey(it) }
}
if (!previous.isEmpty())
    removeObjects(previous, true)
addObjects(objects)
resolveHierarchy()
// Class colours in GeoJSON apply only to classes QuPath creates; keep the user's colours for all of them.
for (seed in seeds) {
    def pathClass = seed.getPathClass()
    if (pathClass.getColor() != null)
        getPathClass(pathClass.toString()).setColor(pathClass.getColor())
}
fireHierarchyUpdate()
def tiles = objects.count { it.isTile() }
println "tumls-qp: imported ${objects.size() - tiles} region(s) and ${tiles} tile(s); " +
        "show 'SIC confidence' with Measure > Show measurement maps"
