package javafx.collections;

import java.util.Collection;
import java.util.List;

/** A list that tells listeners of changes (JavaFX); the part QuPath's class list is used through. */
public interface ObservableList<E> extends List<E> {
    @SuppressWarnings("unchecked")
    boolean addAll(E... elements);

    boolean setAll(Collection<? extends E> collection);
}
