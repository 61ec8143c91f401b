namespace Parsl;

/// <summary>Builds app arguments where C# cannot apply the implicit conversions to <see cref="Arg{T}"/> by itself
/// (a generic method, a <c>var</c>, a conditional expression).</summary>
public static class Arg
{
    /// <summary>A plain value.</summary>
    /// <typeparam name="T">The argument's type.</typeparam>
    /// <param name="value">The value.</param>
    /// <returns>The argument.</returns>
    public static Arg<T> Of<T>(T value) => ArgModule.value(value);

    /// <summary>The result of an app's future: the call depends on it.</summary>
    /// <typeparam name="T">The argument's type.</typeparam>
    /// <param name="future">The future.</param>
    /// <returns>The argument.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="future"/> is null.</exception>
    public static Arg<T> Of<T>(AppFuture<T> future)
    {
        ArgumentNullException.ThrowIfNull(future);
        return ArgModule.future(future);
    }

    /// <summary>The result of a task from outside Parsl: the call depends on it.</summary>
    /// <typeparam name="T">The argument's type.</typeparam>
    /// <param name="task">The task.</param>
    /// <returns>The argument.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="task"/> is null.</exception>
    public static Arg<T> Of<T>(Task<T> task)
    {
        ArgumentNullException.ThrowIfNull(task);
        return ArgModule.task(task);
    }

    /// <summary>The results of several futures, in order, as one array argument (Parsl's <c>inputs=[...]</c>):
    /// the call depends on each of them.</summary>
    /// <typeparam name="T">The futures' result type.</typeparam>
    /// <param name="futures">The futures.</param>
    /// <returns>The argument.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="futures"/> or one of them is null.</exception>
    public static Arg<T[]> All<T>(IEnumerable<AppFuture<T>> futures)
    {
        ArgumentNullException.ThrowIfNull(futures);
        var list = futures.ToArray();
        if (Array.IndexOf(list, null) >= 0)
            throw new ArgumentNullException(nameof(futures), "One of the futures is null.");
        return ArgModule.all(list);
    }

    /// <summary>The results of several futures, in order, as one array argument (Parsl's <c>inputs=[...]</c>).</summary>
    /// <typeparam name="T">The futures' result type.</typeparam>
    /// <param name="futures">The futures.</param>
    /// <returns>The argument.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="futures"/> or one of them is null.</exception>
    public static Arg<T[]> All<T>(params AppFuture<T>[] futures) => All((IEnumerable<AppFuture<T>>)futures);

    /// <summary>A file the app reads: staged in first when it is remote (<c>http</c>, <c>ftp</c>, <c>zip:</c>); the app
    /// gets it with <c>LocalPath</c> set, and opens <c>Filepath</c>.</summary>
    /// <param name="file">The file (<c>Parsl.Data.File.Of("https://host/x.csv")</c>).</param>
    /// <returns>The argument.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="file"/> is null.</exception>
    public static Arg<Parsl.Data.File> File(Parsl.Data.File file)
    {
        ArgumentNullException.ThrowIfNull(file);
        return ArgModule.file(file);
    }

    /// <summary>A file the call writes (Parsl's <c>outputs=[...]</c>): the call's future gets a <see cref="DataFuture"/>
    /// for it in <c>Outputs</c>, completed once the file is written and staged out. The app writes to <c>Filepath</c>.</summary>
    /// <param name="file">The file to produce.</param>
    /// <returns>The argument.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="file"/> is null.</exception>
    public static Arg<Parsl.Data.File> Output(Parsl.Data.File file)
    {
        ArgumentNullException.ThrowIfNull(file);
        return ArgModule.output(file);
    }

    /// <summary>A file another call produces: the call depends on it, and gets the file, staged in when needed.</summary>
    /// <param name="data">The producing call's <see cref="DataFuture"/> (from its future's <c>Outputs</c>, <c>Stdout</c> or <c>Stderr</c>).</param>
    /// <returns>The argument.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="data"/> is null.</exception>
    public static Arg<Parsl.Data.File> Data(DataFuture data)
    {
        ArgumentNullException.ThrowIfNull(data);
        return ArgModule.data(data);
    }

    /// <summary>Several files other calls produce, in order, as one array argument (Parsl's <c>inputs=[...]</c> of DataFutures).</summary>
    /// <param name="data">The data futures.</param>
    /// <returns>The argument.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="data"/> or one of them is null.</exception>
    public static Arg<Parsl.Data.File[]> Files(IEnumerable<DataFuture> data)
    {
        ArgumentNullException.ThrowIfNull(data);
        var list = data.ToArray();
        if (Array.IndexOf(list, null) >= 0)
            throw new ArgumentNullException(nameof(data), "One of the data futures is null.");
        return ArgModule.files(list);
    }
}
