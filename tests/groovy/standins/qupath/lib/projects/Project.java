package qupath.lib.projects;

import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collection;
import java.util.List;
import qupath.lib.objects.classes.PathClass;

/** A project: its file and its class list (QuPath writes the list to classifiers/classes.json). */
public class Project<T> {
    private final Path path;
    private final List<PathClass> pathClasses = new ArrayList<>();
    public int setPathClassesCalls;

    public Project(Path path) { this.path = path; }

    public Path getPath() { return path; }

    public List<PathClass> getPathClasses() { return new ArrayList<>(pathClasses); }

    public boolean setPathClasses(Collection<? extends PathClass> classes) {
        setPathClassesCalls++;
        List<PathClass> next = new ArrayList<>(classes);
        if (next.equals(pathClasses))
            return false;
        pathClasses.clear();
        pathClasses.addAll(next);
        return true;
    }

    public void syncChanges() {}
}
