namespace Parsl.CSharp.Tests;

/// <summary>Kernels for tests: each with its own run directory, and generous limits on every wait so that a
/// broken feature fails its test instead of hanging the run.</summary>
internal static class TestKernel
{
    public static readonly TimeSpan Limit = TimeSpan.FromSeconds(60);

    public static string TempRunDir()
    {
        var dir = Path.Combine(Path.GetTempPath(), "parsl-csharp-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        return dir;
    }

    public static DfkOptions Options(Action<DfkOptions>? configure = null)
    {
        var options = new DfkOptions { RunDir = TempRunDir() };
        configure?.Invoke(options);
        return options;
    }

    public static Task<Dfk> LoadAsync(Action<DfkOptions>? configure = null) => Dfk.LoadAsync(Options(configure));

    /// <summary>The future's result, within the limit.</summary>
    public static Task<T> Within<T>(this AppFuture<T> future) => future.Task.WaitAsync(Limit);

    /// <summary>The exception the future failed with, within the limit.</summary>
    public static async Task<Exception> FailureOf<T>(AppFuture<T> future)
    {
        try
        {
            var value = await future.Task.WaitAsync(Limit);
            throw new Xunit.Sdk.XunitException($"expected task {future.TaskId} to fail; it returned {value}");
        }
        catch (TimeoutException)
        {
            throw new Xunit.Sdk.XunitException($"task {future.TaskId} did not finish within {Limit}");
        }
        catch (Exception e) when (e is not Xunit.Sdk.XunitException)
        {
            return e;
        }
    }
}
