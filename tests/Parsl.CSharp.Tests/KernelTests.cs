using System.Reflection;
using static Parsl.CSharp.Tests.TestKernel;

namespace Parsl.CSharp.Tests;

public class KernelTests
{
    [Fact]
    public async Task Loading_with_defaults_gives_one_thread_pool_executor_and_a_numbered_run_directory()
    {
        var options = Options();
        await using var dfk = await Dfk.LoadAsync(options);
        Assert.Equal(new[] { "threads" }, dfk.ExecutorLabels);
        Assert.Equal(Path.Combine(Path.GetFullPath(options.RunDir), "000"), dfk.RunDir);
        Assert.False(dfk.IsClosed);
    }

    [Fact]
    public async Task Null_options_are_refused_by_name()
    {
        var e = await Assert.ThrowsAsync<ArgumentNullException>(() => Dfk.LoadAsync(null!));
        Assert.Equal("options", e.ParamName);
    }

    [Theory]
    [InlineData("retries", "DfkOptions.Retries")]
    [InlineData("internal", "DfkOptions.InternalTasksMaxThreads")]
    [InlineData("rundir", "DfkOptions.RunDir")]
    [InlineData("threads", "ThreadPoolExecutorOptions.MaxThreads")]
    [InlineData("duplicate", "DfkOptions.Executors")]
    [InlineData("null", "DfkOptions.Executors")]
    [InlineData("label", "DfkOptions.Executors")]
    [InlineData("exitmode", "DfkOptions.ExitMode")]
    public async Task Invalid_options_fail_the_load_naming_the_property(string problem, string field)
    {
        var options = Options(o =>
        {
            switch (problem)
            {
                case "retries": o.Retries = -1; break;
                case "internal": o.InternalTasksMaxThreads = 0; break;
                case "rundir": o.RunDir = " "; break;
                case "threads": o.Executors.Add(new ThreadPoolExecutorOptions { MaxThreads = 0 }); break;
                case "duplicate":
                    o.Executors.Add(new ThreadPoolExecutorOptions());
                    o.Executors.Add(new ThreadPoolExecutorOptions());
                    break;
                case "null": o.Executors.Add(null!); break;
                case "label": o.Executors.Add(new ThreadPoolExecutorOptions { Label = "" }); break;
                case "exitmode": o.ExitMode = (KernelExitMode)7; break;
            }
        });
        var e = await Assert.ThrowsAsync<ConfigurationError>(() => Dfk.LoadAsync(options));
        Assert.Equal(field, e.Field);
        Assert.StartsWith(field + ": ", e.Message);
        Assert.IsAssignableFrom<ParslException>(e);
    }

    [Fact]
    public async Task Several_invalid_options_are_reported_together()
    {
        var options = Options(o =>
        {
            o.Retries = -2;
            o.Executors.Add(new ThreadPoolExecutorOptions { Label = "cpu", MaxThreads = -1 });
        });
        var e = await Assert.ThrowsAsync<ConfigurationError>(() => Dfk.LoadAsync(options));
        Assert.Contains("DfkOptions.Retries", e.Message);
        Assert.Contains("ThreadPoolExecutorOptions.MaxThreads", e.Message);
        Assert.Contains("'cpu'", e.Message);
    }

    [Fact]
    public async Task Null_delegates_are_refused_by_name()
    {
        await using var dfk = await LoadAsync();
        Assert.Equal("function", Assert.Throws<ArgumentNullException>(() => dfk.App((Func<int, int>)null!)).ParamName);
        Assert.Equal("function", Assert.Throws<ArgumentNullException>(() => dfk.App((Func<int, CancellationToken, Task<int>>)null!)).ParamName);
        Assert.Equal("command", Assert.Throws<ArgumentNullException>(() => dfk.ShellApp((Func<string>)null!)).ParamName);
        Assert.Equal("body", Assert.Throws<ArgumentNullException>(() => dfk.JoinApp((Func<int, AppFuture<int>>)null!)).ParamName);
        Assert.Equal("futures", Assert.Throws<ArgumentNullException>(() => Arg.All(new AppFuture<int>[] { null! })).ParamName);
    }

    [Fact]
    public async Task Calling_an_app_after_disposal_is_a_NoDataFlowKernelError()
    {
        var dfk = await LoadAsync();
        var square = dfk.App((int x) => x * x);
        Assert.Equal(4, await square.Invoke(2).Within());
        await dfk.DisposeAsync();
        Assert.True(dfk.IsClosed);
        Assert.Throws<NoDataFlowKernelError>(() => square.Invoke(3));
        Assert.Throws<NoDataFlowKernelError>(() => dfk.App((int x) => x));
        await dfk.DisposeAsync(); // a second disposal does nothing
        await Assert.ThrowsAsync<NoDataFlowKernelError>(() => dfk.CleanupAsync());
    }

    [Fact]
    public async Task Futures_of_a_kernel_skipped_on_shutdown_fail_with_KernelShutdownError()
    {
        var dfk = await LoadAsync(o => o.ExitMode = KernelExitMode.Skip);
        var inc = dfk.App((int x) => x + 1);
        var never = new TaskCompletionSource<int>();
        var pending = inc.Invoke(never.Task);
        var dependent = inc.Invoke(pending);
        await dfk.DisposeAsync().AsTask().WaitAsync(Limit);
        var e = Assert.IsType<KernelShutdownError>(await FailureOf(pending));
        Assert.Equal(pending.TaskId, e.TaskId);
        Assert.IsAssignableFrom<ParslException>(await FailureOf(dependent));
    }

    [Fact]
    public async Task Wait_mode_lets_every_task_finish_before_shutdown()
    {
        var dfk = await LoadAsync();
        var gate = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var inc = dfk.App((int x) => x + 1);
        var f = inc.Invoke(gate.Task);
        var cleanup = dfk.CleanupAsync(KernelExitMode.Wait);
        Assert.False(f.IsCompleted);
        gate.SetResult(1);
        await cleanup.WaitAsync(Limit);
        Assert.Equal(2, await f.Within());
    }

    [Fact]
    public async Task WaitForCurrentTasksAsync_returns_once_every_task_is_final()
    {
        await using var dfk = await LoadAsync();
        var gate = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var inc = dfk.App((int x) => x + 1);
        var fs = Enumerable.Range(0, 20).Select(_ => inc.Invoke(gate.Task)).ToList();
        var waiting = dfk.WaitForCurrentTasksAsync();
        Assert.False(waiting.IsCompleted);
        gate.SetResult(0);
        await waiting.WaitAsync(Limit);
        Assert.All(fs, f => Assert.Equal(States.ExecDone, f.Status));
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => dfk.WaitForCurrentTasksAsync(cts.Token));
    }

    [Fact]
    public void Every_Parsl_error_derives_from_ParslException()
    {
        var errors = typeof(ParslException).Assembly.GetExportedTypes()
            .Where(t => typeof(Exception).IsAssignableFrom(t) && t != typeof(ParslException))
            .ToList();
        Assert.NotEmpty(errors);
        Assert.All(errors, t => Assert.True(t.IsSubclassOf(typeof(ParslException)), t.Name));
    }

    /// <summary>Members of core types that C# sees but should not use, each with the C# door that replaces it.
    /// They are marked <c>[EditorBrowsable(Never)]</c>, so C# IntelliSense does not offer them.</summary>
    private static readonly Dictionary<string, string> HiddenFromCSharp = new()
    {
        ["AppFuture.get_State"] = "the Status extension (States, a C# enum)",
        ["AppFuture.State"] = "the Status extension (States, a C# enum)",
    };

    [Fact]
    public void The_CSharp_surface_shows_no_FSharp_types()
    {
        var fsharpCore = typeof(Microsoft.FSharp.Core.FSharpFunc<,>).Assembly;
        var offenders = new List<string>();

        bool IsFSharp(Type t)
        {
            if (t.HasElementType) return IsFSharp(t.GetElementType()!);
            if (t.Assembly == fsharpCore) return true;
            // F# unions of the core (TaskState, StdSpec, ...) are F#-specific even though they live in our assembly.
            if (t.GetCustomAttributes().Any(a => a.GetType().FullName == "Microsoft.FSharp.Core.CompilationMappingAttribute"
                    && a.GetType().GetProperty("SourceConstructFlags")!.GetValue(a)!.ToString() == "SumType"))
                return true;
            // F# tuples compile to System.Tuple: never on the C# surface (C# has its own).
            if (t.IsGenericType && t.FullName?.StartsWith("System.Tuple`", StringComparison.Ordinal) == true) return true;
            return t.IsGenericType && t.GetGenericArguments().Any(IsFSharp);
        }

        static bool Ours(Type t) => t.Assembly.GetName().Name!.StartsWith("Parsl", StringComparison.Ordinal);

        IEnumerable<Type> Parts(Type t)
        {
            if (t.HasElementType) { foreach (var p in Parts(t.GetElementType()!)) yield return p; yield break; }
            if (t.IsGenericParameter) yield break;
            yield return t.IsGenericType ? t.GetGenericTypeDefinition() : t;
            if (t.IsGenericType)
                foreach (var a in t.GetGenericArguments())
                    foreach (var p in Parts(a)) yield return p;
        }

        // The check itself can see F# types.
        Assert.True(IsFSharp(typeof(TaskState)));
        Assert.True(IsFSharp(typeof(Microsoft.FSharp.Collections.FSharpList<int>[])));
        Assert.True(IsFSharp(typeof(Tuple<int, string>)));
        Assert.False(IsFSharp(typeof(AppFuture<int>)));

        // Everything the façade exports, the errors C# code catches, and every type of ours reachable from their
        // members (AppFuture<T>, DataFuture, File, TaskInfo, ... live in the F# core).
        var queue = new Queue<Type>(typeof(Dfk).Assembly.GetExportedTypes()
            .Concat(typeof(ParslException).Assembly.GetExportedTypes().Where(t => typeof(ParslException).IsAssignableFrom(t))));
        var seen = new HashSet<Type>();
        var hidden = new List<string>();
        while (queue.Count > 0)
        {
            var type = queue.Dequeue();
            if (!seen.Add(type)) continue;
            if (type.BaseType is { } b)
            {
                if (IsFSharp(b)) offenders.Add($"{type.Name} : {b.Name}");
                foreach (var p in Parts(b).Where(Ours)) queue.Enqueue(p);
            }
            // The interfaces a type shows C# (IExecutor, ILauncher, ...) are part of what C# code calls.
            foreach (var i in type.GetInterfaces())
            {
                if (IsFSharp(i)) offenders.Add($"{type.Name} : {i}");
                else foreach (var p in Parts(i).Where(Ours)) queue.Enqueue(p);
            }
            foreach (var m in type.GetMembers(BindingFlags.Public | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly))
            {
                var name = $"{(type.IsGenericType ? type.Name[..type.Name.IndexOf('`')] : type.Name)}.{m.Name}";
                if (m.GetCustomAttribute<System.ComponentModel.EditorBrowsableAttribute>()?.State == System.ComponentModel.EditorBrowsableState.Never
                    || (m is MethodInfo { IsSpecialName: true } accessor && type.GetProperties().Any(p =>
                        (p.GetMethod == accessor || p.SetMethod == accessor)
                        && p.GetCustomAttribute<System.ComponentModel.EditorBrowsableAttribute>()?.State == System.ComponentModel.EditorBrowsableState.Never)))
                {
                    hidden.Add(name);
                    continue;
                }
                var types = m switch
                {
                    MethodInfo mi => mi.GetParameters().Select(p => p.ParameterType).Append(mi.ReturnType),
                    ConstructorInfo ci => ci.GetParameters().Select(p => p.ParameterType),
                    PropertyInfo pi => new[] { pi.PropertyType },
                    FieldInfo fi => new[] { fi.FieldType },
                    EventInfo ei => new[] { ei.EventHandlerType! },
                    _ => Enumerable.Empty<Type>(),
                };
                foreach (var t in types)
                {
                    if (IsFSharp(t)) offenders.Add($"{name}: {t}");
                    else foreach (var p in Parts(t).Where(Ours)) queue.Enqueue(p);
                }
            }
        }
        Assert.Contains(typeof(AppFuture<>), seen);
        Assert.Contains(typeof(DataFuture), seen);
        Assert.Contains(typeof(Parsl.Data.File), seen);
        Assert.True(offenders.Count == 0, "F# types on the C# surface:\n" + string.Join("\n", offenders.Distinct()));
        Assert.All(hidden, h => Assert.True(HiddenFromCSharp.ContainsKey(h), $"{h} is hidden from C# but has no C# door listed"));
    }
}
