using Microsoft.Extensions.Logging;
using Serilog.Events;

namespace Parsl;

/// <summary>The bridge from the core's log (Serilog, kept off the C# surface) to <c>Microsoft.Extensions.Logging</c>.</summary>
internal static class Logging
{
    public const string Category = "Parsl";

    public static LogEventLevel ToSerilog(LogLevel level) => level switch
    {
        LogLevel.Trace => LogEventLevel.Verbose,
        LogLevel.Debug => LogEventLevel.Debug,
        LogLevel.Warning => LogEventLevel.Warning,
        LogLevel.Error => LogEventLevel.Error,
        LogLevel.Critical => LogEventLevel.Fatal,
        LogLevel.None => LogEventLevel.Fatal,
        _ => LogEventLevel.Information,
    };

    public static LogLevel ToExtensions(LogEventLevel level) => level switch
    {
        LogEventLevel.Verbose => LogLevel.Trace,
        LogEventLevel.Debug => LogLevel.Debug,
        LogEventLevel.Warning => LogLevel.Warning,
        LogEventLevel.Error => LogLevel.Error,
        LogEventLevel.Fatal => LogLevel.Critical,
        _ => LogLevel.Information,
    };

    /// <summary>Hands each event to a logger of category <c>Parsl</c>, with the template's properties as the state
    /// (so structured providers see <c>Task</c>, <c>State</c>, ... and <c>{OriginalFormat}</c>).</summary>
    internal sealed class LoggerFactorySink(ILoggerFactory factory) : Serilog.Core.ILogEventSink
    {
        private readonly ILogger logger = factory.CreateLogger(Category);

        public void Emit(LogEvent logEvent)
        {
            var level = ToExtensions(logEvent.Level);
            if (!logger.IsEnabled(level)) return;
            var state = new List<KeyValuePair<string, object?>>(logEvent.Properties.Count + 1);
            foreach (var p in logEvent.Properties)
                state.Add(new(p.Key, p.Value is ScalarValue s ? s.Value : p.Value.ToString()));
            state.Add(new("{OriginalFormat}", logEvent.MessageTemplate.Text));
            var message = logEvent.RenderMessage(System.Globalization.CultureInfo.InvariantCulture);
            logger.Log(level, default, new State(state, message), logEvent.Exception, static (s, _) => s.Message);
        }
    }

    private sealed class State(List<KeyValuePair<string, object?>> properties, string message) : IReadOnlyList<KeyValuePair<string, object?>>
    {
        public string Message => message;
        public KeyValuePair<string, object?> this[int index] => properties[index];
        public int Count => properties.Count;
        public IEnumerator<KeyValuePair<string, object?>> GetEnumerator() => properties.GetEnumerator();
        System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();
        public override string ToString() => message;
    }
}
