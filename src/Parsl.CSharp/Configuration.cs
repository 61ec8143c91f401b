using System.Globalization;
using System.Reflection;
using Microsoft.Extensions.Configuration;

namespace Parsl;

public sealed partial class DfkOptions
{
    /// <summary>Options from configuration (<c>appsettings.json</c>, environment variables, any
    /// <see cref="IConfiguration"/>): keys are the C# property names (any case). The kinds of executor, provider and
    /// launcher are chosen by a <c>Type</c> key: <c>ThreadPool</c>, <c>HighThroughput</c>; <c>Local</c>, <c>Slurm</c>,
    /// <c>GridEngine</c>, <c>PBSPro</c>, <c>Torque</c>, <c>Condor</c>, <c>LSF</c>, <c>Kubernetes</c>; <c>Simple</c>,
    /// <c>SingleNode</c>, <c>Srun</c>, <c>SrunMPI</c>, <c>Aprun</c>, <c>Jsrun</c>, <c>MpiExec</c>, <c>MpiRun</c>,
    /// <c>GnuParallel</c>, <c>Wrapped</c> (the class name works too, as <c>SlurmProviderOptions</c>). Every key must
    /// bind: an unknown key, a missing or unknown <c>Type</c>, or a value of the wrong form raises
    /// <see cref="ConfigurationError"/> whose <see cref="ConfigurationError.Field"/> is the configuration path
    /// (<c>Parsl:Executors:0:Provider:MaxBlocks</c>). The values themselves are checked by
    /// <see cref="Dfk.LoadAsync(DfkOptions, CancellationToken)"/>, as for options made in code. Delegates,
    /// <see cref="LoggerFactory"/> and <see cref="MemoHashers"/> cannot come from configuration: set them in code.
    /// Use this rather than <c>ConfigurationBinder</c>'s <c>Get&lt;DfkOptions&gt;()</c>, which cannot choose an
    /// executor's kind and skips the executors without a word.</summary>
    /// <example><code>
    /// // appsettings.json: { "Parsl": { "Retries": 2, "Executors": [ { "Type": "HighThroughput", "MaxWorkersPerNode": 4,
    /// //                     "Provider": { "Type": "Slurm", "Partition": "debug", "Launcher": { "Type": "Srun" } } } ] } }
    /// var options = DfkOptions.FromConfiguration(configuration.GetSection("Parsl"));
    /// </code></example>
    /// <param name="configuration">The section holding the options.</param>
    /// <returns>New options.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="configuration"/> is null.</exception>
    /// <exception cref="ConfigurationError">A key or value does not bind; <see cref="ConfigurationError.Field"/> is its path.</exception>
    public static DfkOptions FromConfiguration(IConfiguration configuration)
    {
        ArgumentNullException.ThrowIfNull(configuration);
        var options = new DfkOptions();
        var errors = new List<ConfigurationError>();
        OptionsBinder.Bind(options, configuration, errors);
        if (errors.Count == 1) throw errors[0];
        if (errors.Count > 1)
            throw new ConfigurationError(errors[0].Field,
                $"{Reason(errors[0])} (and: {string.Join("; ", errors.Skip(1).Select(e => e.Message))})");
        return options;
    }
}

/// <summary>Binds options classes from configuration with an error for everything that does not bind, where
/// <c>ConfigurationBinder</c> would skip what it does not know (it dropped <c>Executors</c>, whose element type is
/// abstract) and ignore unknown keys.</summary>
internal static class OptionsBinder
{
    private static readonly Dictionary<Type, Type[]> Kinds = new()
    {
        [typeof(ExecutorOptions)] = [typeof(ThreadPoolExecutorOptions), typeof(HighThroughputExecutorOptions)],
        [typeof(ProviderOptions)] =
        [
            typeof(LocalProviderOptions), typeof(SlurmProviderOptions), typeof(GridEngineProviderOptions), typeof(PBSProProviderOptions),
            typeof(TorqueProviderOptions), typeof(CondorProviderOptions), typeof(LSFProviderOptions), typeof(KubernetesProviderOptions),
        ],
        [typeof(LauncherOptions)] =
        [
            typeof(SimpleLauncherOptions), typeof(SingleNodeLauncherOptions), typeof(SrunLauncherOptions), typeof(SrunMPILauncherOptions),
            typeof(AprunLauncherOptions), typeof(JsrunLauncherOptions), typeof(MpiExecLauncherOptions), typeof(MpiRunLauncherOptions),
            typeof(GnuParallelLauncherOptions), typeof(WrappedLauncherOptions),
        ],
    };

    private static string Short(Type t, Type kind)
    {
        var n = t.Name[..^"Options".Length];
        var suffix = kind == typeof(ExecutorOptions) ? "Executor" : kind == typeof(ProviderOptions) ? "Provider" : "Launcher";
        return n.EndsWith(suffix, StringComparison.Ordinal) ? n[..^suffix.Length] : n;
    }

    private static bool Names(Type t, Type kind, string name) =>
        string.Equals(name, Short(t, kind), StringComparison.OrdinalIgnoreCase)
        || string.Equals(name, t.Name, StringComparison.OrdinalIgnoreCase)
        || string.Equals(name, t.Name[..^"Options".Length], StringComparison.OrdinalIgnoreCase);

    public static void Bind(object target, IConfiguration section, List<ConfigurationError> errors)
    {
        var type = target.GetType();
        var polymorphic = Kinds.Keys.Any(k => k.IsAssignableFrom(type));
        foreach (var child in section.GetChildren())
        {
            if (polymorphic && string.Equals(child.Key, "Type", StringComparison.OrdinalIgnoreCase)) continue;
            var property = type.GetProperty(child.Key, BindingFlags.Public | BindingFlags.Instance | BindingFlags.IgnoreCase);
            if (property is null || property.GetIndexParameters().Length > 0)
            {
                var known = type.GetProperties(BindingFlags.Public | BindingFlags.Instance).Select(p => p.Name).Order();
                errors.Add(new ConfigurationError(child.Path,
                    $"{type.Name} has no property '{child.Key}'; use one of {string.Join(", ", known)}{(polymorphic ? " (and Type)" : "")}"));
                continue;
            }
            BindProperty(target, property, child, errors);
        }
    }

    private static void BindProperty(object target, PropertyInfo property, IConfigurationSection section, List<ConfigurationError> errors)
    {
        var t = property.PropertyType;
        if (t.IsGenericType && t.GetGenericTypeDefinition() == typeof(IDictionary<,>))
        {
            if (t.GetGenericArguments()[0] != typeof(string) || t.GetGenericArguments()[1] != typeof(string))
            {
                errors.Add(new ConfigurationError(section.Path, $"{property.DeclaringType!.Name}.{property.Name} cannot come from configuration; set it in code"));
                return;
            }
            var dict = (IDictionary<string, string>)property.GetValue(target)!;
            foreach (var entry in section.GetChildren())
            {
                if (entry.Value is null) errors.Add(new ConfigurationError(entry.Path, "must be a string value, not a section"));
                else dict[entry.Key] = entry.Value;
            }
            return;
        }
        if (t.IsGenericType && t.GetGenericTypeDefinition() == typeof(IList<>))
        {
            var element = t.GetGenericArguments()[0];
            var list = property.GetValue(target);
            if (list is null)
            {
                if (!property.CanWrite) return;
                list = Activator.CreateInstance(typeof(List<>).MakeGenericType(element))!;
                property.SetValue(target, list);
            }
            var add = typeof(ICollection<>).MakeGenericType(element).GetMethod("Add")!;
            if (section.Value is { Length: > 0 } single && !section.GetChildren().Any())
            {
                // A single value where a list is expected: one element, as ConfigurationBinder does for arrays.
                if (TryValue(element, section, single, errors, out var one)) add.Invoke(list, [one]);
                return;
            }
            foreach (var item in section.GetChildren().OrderBy(c => int.TryParse(c.Key, out var i) ? i : int.MaxValue))
                if (TryObject(element, item, errors, out var value)) add.Invoke(list, [value]);
            return;
        }
        if (!property.CanWrite)
        {
            errors.Add(new ConfigurationError(section.Path, $"{property.DeclaringType!.Name}.{property.Name} cannot be set"));
            return;
        }
        if (TryObject(t, section, errors, out var v)) property.SetValue(target, v);
    }

    private static bool TryObject(Type t, IConfigurationSection section, List<ConfigurationError> errors, out object? value)
    {
        value = null;
        var kind = Kinds.Keys.FirstOrDefault(k => k == t);
        if (kind is not null)
        {
            var name = section["Type"];
            var choices = string.Join(", ", Kinds[kind].Select(k => Short(k, kind)));
            if (string.IsNullOrWhiteSpace(name))
            {
                errors.Add(new ConfigurationError(ConfigurationPath.Combine(section.Path, "Type"),
                    $"is missing: say which {kind.Name[..^"Options".Length].ToLowerInvariant()} this is, one of {choices}"));
                return false;
            }
            var concrete = Kinds[kind].FirstOrDefault(k => Names(k, kind, name));
            if (concrete is null)
            {
                errors.Add(new ConfigurationError(ConfigurationPath.Combine(section.Path, "Type"), $"'{name}' is not one of {choices}"));
                return false;
            }
            value = Activator.CreateInstance(concrete)!;
            Bind(value, section, errors);
            return true;
        }
        if (t == typeof(SshChannelOptions) || t == typeof(StagingProviderOptions))
        {
            if (section.Value is not null && !section.GetChildren().Any())
            {
                errors.Add(new ConfigurationError(section.Path, $"must be a section with the properties of {t.Name}, not a value"));
                return false;
            }
            value = Activator.CreateInstance(t)!;
            Bind(value, section, errors);
            return true;
        }
        if (section.Value is null)
        {
            if (section.GetChildren().Any())
            {
                errors.Add(new ConfigurationError(section.Path, $"must be a value ({Describe(t)}), not a section"));
                return false;
            }
            // An empty JSON value ("" or null): null for a nullable property.
            if (!t.IsValueType || Nullable.GetUnderlyingType(t) is not null) return true;
            errors.Add(new ConfigurationError(section.Path, $"is empty; give {Describe(t)}"));
            return false;
        }
        return TryValue(t, section, section.Value, errors, out value);
    }

    private static bool TryValue(Type t, IConfigurationSection section, string text, List<ConfigurationError> errors, out object? value)
    {
        value = null;
        var inner = Nullable.GetUnderlyingType(t) ?? t;
        if (Nullable.GetUnderlyingType(t) is not null && text.Length == 0) return true;
        var ok = false;
        var c = CultureInfo.InvariantCulture;
        if (inner == typeof(string)) { value = text; ok = true; }
        else if (inner == typeof(int)) { ok = int.TryParse(text, NumberStyles.Integer, c, out var i); value = i; }
        else if (inner == typeof(double)) { ok = double.TryParse(text, NumberStyles.Float, c, out var d); value = d; }
        else if (inner == typeof(bool)) { ok = bool.TryParse(text, out var b); value = b; }
        else if (inner == typeof(TimeSpan)) { ok = TimeSpan.TryParse(text, c, out var s); value = s; }
        else if (inner.IsEnum)
        {
            ok = Enum.TryParse(inner, text, true, out var e) && Enum.IsDefined(inner, e!) && !int.TryParse(text, out _);
            value = e;
        }
        else
        {
            errors.Add(new ConfigurationError(section.Path, $"a {inner.Name} cannot come from configuration; set it in code"));
            return false;
        }
        if (!ok) errors.Add(new ConfigurationError(section.Path, $"'{text}' is not {Describe(inner)}"));
        return ok;
    }

    private static string Describe(Type t)
    {
        var inner = Nullable.GetUnderlyingType(t) ?? t;
        if (inner == typeof(int)) return "a whole number";
        if (inner == typeof(double)) return "a number (with '.' for decimals)";
        if (inner == typeof(bool)) return "true or false";
        if (inner == typeof(TimeSpan)) return "a time span, as 00:00:30 (30 seconds) or 1.00:00:00 (a day)";
        if (inner.IsEnum) return $"one of {string.Join(", ", Enum.GetNames(inner))}";
        return "a string";
    }
}
