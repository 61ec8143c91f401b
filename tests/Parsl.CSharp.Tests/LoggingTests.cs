using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using static Parsl.CSharp.Tests.TestKernel;

namespace Parsl.CSharp.Tests;

/// <summary>Log entries a test can read back, with their structured state.</summary>
internal sealed class CapturingProvider : ILoggerProvider
{
    public ConcurrentQueue<(string Category, LogLevel Level, string Message, IReadOnlyList<KeyValuePair<string, object?>> State)> Entries { get; } = new();

    public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName);

    public void Dispose() { }

    private sealed class Logger(CapturingProvider owner, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(LogLevel logLevel) => true;
        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            owner.Entries.Enqueue((category, logLevel, formatter(state, exception),
                state as IReadOnlyList<KeyValuePair<string, object?>> ?? []));
    }
}

/// <summary>Logging through Microsoft.Extensions.Logging, with parsl.log in the run directory kept as the default.</summary>
public class LoggingTests
{
    [Fact]
    public async Task Kernel_events_reach_the_ILoggerFactory_with_their_properties_and_parsl_log_is_still_written()
    {
        var capture = new CapturingProvider();
        using var factory = LoggerFactory.Create(b => b.AddProvider(capture).SetMinimumLevel(LogLevel.Trace));
        string runDir;
        await using (var dfk = await LoadAsync(o => { o.LoggerFactory = factory; o.LogLevel = LogLevel.Debug; }))
        {
            runDir = dfk.RunDir;
            var inc = dfk.App((int x) => x + 1);
            Assert.Equal(2, await inc.Invoke(1).Within());
        }
        var loaded = Assert.Single(capture.Entries, e => e.Message.Contains("loaded", StringComparison.Ordinal));
        Assert.Equal("Parsl", loaded.Category);
        Assert.Equal(LogLevel.Information, loaded.Level);
        Assert.Contains(loaded.State, kv => kv.Key == "RunDir" && (string?)kv.Value == runDir);
        Assert.Contains(loaded.State, kv => kv.Key == "{OriginalFormat}");
        Assert.Contains(capture.Entries, e => e.Level == LogLevel.Debug && e.State.Any(kv => kv.Key == "State" && Equals(kv.Value, "exec_done")));
        var log = File.ReadAllText(Path.Combine(runDir, "parsl.log"));
        Assert.Contains("loaded", log);
    }

    [Fact]
    public async Task Without_the_log_file_the_factory_still_gets_events_and_LogLevel_None_logs_nothing()
    {
        var capture = new CapturingProvider();
        using var factory = LoggerFactory.Create(b => b.AddProvider(capture));
        await using (var dfk = await LoadAsync(o => { o.LoggerFactory = factory; o.InitializeLogging = false; }))
            Assert.False(File.Exists(Path.Combine(dfk.RunDir, "parsl.log")));
        Assert.NotEmpty(capture.Entries);
        Assert.DoesNotContain(capture.Entries, e => e.Level < LogLevel.Information);

        var none = new CapturingProvider();
        using var quiet = LoggerFactory.Create(b => b.AddProvider(none));
        await using (var dfk = await LoadAsync(o => { o.LoggerFactory = quiet; o.LogLevel = LogLevel.None; }))
            Assert.False(File.Exists(Path.Combine(dfk.RunDir, "parsl.log")));
        Assert.Empty(none.Entries);
    }
}
