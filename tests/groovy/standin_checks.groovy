/*
 * Checks that the stand-ins behave like QuPath where the scripts depend on it; prints one JSON object of results
 * for tests/test_groovy_standins.py. Run with the compiled stand-ins, Groovy, Gson and JTS on the class path.
 */
import com.google.gson.JsonObject
import com.google.gson.JsonParser
import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit
import javafx.application.Platform
import qupath.lib.gui.QuPathGUI
import qupath.lib.images.ImageData
import qupath.lib.io.GsonTools
import qupath.lib.io.PathIO
import qupath.lib.objects.classes.PathClass
import qupath.lib.objects.hierarchy.PathObjectHierarchy
import qupath.lib.scripting.QP

def results = new JsonObject()
def read = { String text -> PathIO.readObjectsFromGeoJSON(new ByteArrayInputStream(text.getBytes('UTF-8'))) }
def failure = { Closure action ->
    try {
        action()
        return 'none'
    } catch (Throwable t) {
        return t.getClass().getName()
    }
}
def square = { double x, double y, double side -> "{\"type\":\"Polygon\",\"coordinates\":[[[${x},${y}],[${x + side},${y}]," +
        "[${x + side},${y + side}],[${x},${y + side}],[${x},${y}]]]}" }
def feature = { String type, String geometry, String cls = null, String measurements = '{}' ->
    "{\"type\":\"Feature\",\"geometry\":${geometry},\"properties\":{\"objectType\":\"${type}\"," +
            (cls ? "\"classification\":{\"name\":\"${cls}\",\"color\":[1,2,3]}," : '') +
            "\"measurements\":${measurements}}}"
}

// ROIs: QuPath's adapter writes coordinates with jsonValue, which a Gson tree writer rejects.
def roi = read(feature('annotation', square(10.5, 20, 5)))[0].getROI()
def gson = GsonTools.getInstance()
results.addProperty('roi_to_tree', failure { gson.toJsonTree(roi) })
results.add('roi_through_string', JsonParser.parseString(gson.toJson(roi)))

// Detections, tiles and cells keep float32 measurements; annotations doubles.
def objects = read("[${feature('tile', square(0, 0, 1), null, '{"v": 0.1}')}," +
        "${feature('detection', square(0, 0, 1), null, '{"v": 0.1}')}," +
        "${feature('annotation', square(0, 0, 1), null, '{"v": 0.1}')}]")
results.addProperty('tile_value', objects[0].getMeasurementList().get('v'))
results.addProperty('detection_value', objects[1].getMeasurementList().get('v'))
results.addProperty('annotation_value', objects[2].getMeasurementList().get('v'))
results.addProperty('kinds', objects.collect { it.getClass().getSimpleName() }.join(','))

// Reading is all or nothing.
results.addProperty('class_without_colour', failure {
    read("[${feature('annotation', square(0, 0, 1))}, {\"type\":\"Feature\",\"geometry\":${square(0, 0, 1)}," +
            "\"properties\":{\"classification\":{\"name\":\"X\"}}}]")
})
results.addProperty('null_geometry', failure { read('{"type":"Feature","geometry":null,"properties":{}}') })
results.addProperty('text_measurement', failure { read(feature('tile', square(0, 0, 1), null, '{"v": "a"}')) })
results.addProperty('bow_tie', failure {
    read('{"type":"Feature","geometry":{"type":"Polygon","coordinates":[[[0,0],[2,2],[2,0],[0,2],[0,0]]]}}')
})

// Classes: one instance per name, "a: b" derived, built-in classes keep QuPath's colour.
def derived = PathClass.fromString('Tumor: Positive x')
results.addProperty('derived_name', derived.getName())
results.addProperty('derived_string', derived.toString())
results.addProperty('derived_parent', derived.getParentClass().toString())
results.addProperty('stroma_rgb', PathClass.fromString('Stroma', 0x112233).getColor() & 0xffffff)
results.addProperty('same_instance', PathClass.fromString('Tumor') == PathClass.getInstance('Tumor'))

// The current image is the calling thread's.
def hierarchy = new PathObjectHierarchy()
QP.setBatchProjectAndImage(null, new ImageData(null, hierarchy))
def otherThread = null
def thread = Thread.start { otherThread = QP.getCurrentImageData() }
thread.join()
results.addProperty('this_thread_sees_image', QP.getCurrentImageData() != null)
results.addProperty('other_thread_sees_image', otherThread != null)

// resolveHierarchy re-parents across everything by geometry; addObjects alone does not nest.
def big = read(feature('annotation', square(0, 0, 100), 'Tissue 1'))[0]
def small = read(feature('annotation', square(10, 10, 20), 'Tumor (SIC)'))[0]
def tile = read(feature('tile', square(12, 12, 4)))[0]
def outside = read(feature('tile', square(60, 60, 4)))[0]
hierarchy.addObjects([big, tile, outside])
big.addChildObjects([tile, outside])
hierarchy.addObjects([small])
results.addProperty('after_add_small_parent', small.getParent().isRootObject())
results.addProperty('after_add_tile_parent', tile.getParent() == big)
hierarchy.resolveHierarchy()
results.addProperty('after_resolve_small_parent', small.getParent() == big)
results.addProperty('after_resolve_tile_parent', tile.getParent() == small)
results.addProperty('after_resolve_outside_parent', outside.getParent() == big)
hierarchy.removeObjects([big], true)
results.addProperty('after_remove_small_parent', small.getParent().isRootObject())
results.addProperty('after_remove_outside_parent', outside.getParent().isRootObject())

// The JavaFX thread: runLater returns before the task runs; the GUI's class list changes only there.
def release = new CountDownLatch(1)
def ran = new CountDownLatch(1)
Platform.runLater { release.await(10, TimeUnit.SECONDS); ran.countDown() }
results.addProperty('run_later_waits', ran.getCount() == 1)
release.countDown()
results.addProperty('run_later_ran', ran.await(10, TimeUnit.SECONDS))
def constructor = QuPathGUI.getDeclaredConstructor()
constructor.setAccessible(true)
def gui = constructor.newInstance()
results.addProperty('gui_list_off_fx_thread', failure { gui.getAvailablePathClasses().add(PathClass.fromString('Y')) })
def onFx = new CountDownLatch(1)
def fxOutcome = null
Platform.runLater { fxOutcome = failure { gui.getAvailablePathClasses().add(PathClass.fromString('Y')) }; onFx.countDown() }
onFx.await(10, TimeUnit.SECONDS)
results.addProperty('gui_list_on_fx_thread', fxOutcome)

// What the API of the stand-ins leaves out (QuPath 0.4-0.7 have none of it, or have it deprecated).
results.addProperty('qp_remove_objects', QP.metaClass.respondsTo(QP, 'removeObjects').size())
results.addProperty('measurement_get_names', objects[0].getMeasurementList().metaClass.respondsTo(
        objects[0].getMeasurementList(), 'getNames').size())

println results
