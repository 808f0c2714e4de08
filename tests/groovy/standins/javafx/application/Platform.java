package javafx.application;

import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;

/**
 * The JavaFX application thread: runLater() queues the task and returns at once (it runs later, on that one
 * thread), as in JavaFX.
 */
public final class Platform {
    private static volatile Thread fxThread;
    private static final ExecutorService FX = Executors.newSingleThreadExecutor(task -> {
        Thread thread = new Thread(task, "JavaFX Application Thread");
        thread.setDaemon(true);
        fxThread = thread;
        return thread;
    });

    private Platform() {}

    public static void runLater(Runnable runnable) { FX.execute(runnable); }

    public static boolean isFxApplicationThread() { return Thread.currentThread() == fxThread; }
}
