package javafx.application;

/** Runs the task at once and counts it (QuPath's GUI thread is not there in the tests). */
public final class Platform {
    public static int runLaterCalls;

    private Platform() {}

    public static void runLater(Runnable task) {
        runLaterCalls++;
        task.run();
    }
}
