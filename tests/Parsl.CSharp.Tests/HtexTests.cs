using Parsl.Executors.HighThroughput;
using static Parsl.CSharp.Tests.TestKernel;

namespace Parsl.CSharp.Tests;

/// <summary>A C# record that travels to a worker process and back.</summary>
public sealed record Sample(string Name, int Count, IReadOnlyList<double> Values);

/// <summary>Another record, made on the worker from a <see cref="Sample"/>.</summary>
public sealed record Summary(string Name, double Mean, int WorkerProcess);

/// <summary>The HighThroughputExecutor from C#: real worker processes started by a LocalProvider, on loopback.</summary>
public class HtexTests
{
    private static int Cube(int x) => x * x * x;

    private static Summary Summarise(Sample s) =>
        new(s.Name.ToUpperInvariant(), s.Values.Sum() / s.Count, Environment.ProcessId);

    private static int Fail(string why) => throw new InvalidOperationException("refused: " + why);

    /// <summary>Short heartbeats and polls, so that a broken block is noticed well within the test limit.</summary>
    private static HighThroughputExecutorOptions Fast(Action<HighThroughputExecutorOptions>? configure = null)
    {
        var htex = new HighThroughputExecutorOptions
        {
            Label = "htex",
            MaxWorkersPerNode = 2,
            HeartbeatPeriod = TimeSpan.FromMilliseconds(200),
            HeartbeatThreshold = TimeSpan.FromSeconds(3),
            StrategyPeriod = TimeSpan.FromMilliseconds(200),
            Provider = new LocalProviderOptions { StatusPollingInterval = TimeSpan.FromMilliseconds(200) },
        };
        configure?.Invoke(htex);
        return htex;
    }

    private static Task<Dfk> LoadHtexAsync(Action<HighThroughputExecutorOptions>? configure = null) =>
        LoadAsync(o => o.Executors.Add(Fast(configure)));

    [Fact]
    public void The_worker_executable_is_next_to_the_application()
    {
        // The ProjectReference to Parsl.Workers copies it here; the default WorkerCommand runs it from here.
        Assert.True(File.Exists(Path.Combine(AppContext.BaseDirectory, "Parsl.Workers.dll")));
        Assert.True(File.Exists(Path.Combine(AppContext.BaseDirectory, "Parsl.Workers.runtimeconfig.json")));
    }

    [Fact]
    public async Task Lambdas_static_methods_and_closures_run_on_worker_processes()
    {
        await using var dfk = await LoadHtexAsync();
        var square = dfk.App((int x) => x * x);
        var cube = dfk.App<int, int>(Cube);
        var offset = 1000 + DateTime.UtcNow.Year % 1;
        var prefix = "n=";
        var shift = dfk.App((int x) => prefix + (x + offset));
        var pid = dfk.App((int _) => Environment.ProcessId);

        var nine = square.Invoke(3);
        Assert.Equal(729, await cube.Invoke(nine).Within());
        Assert.Equal("n=1009", await shift.Invoke(nine).Within());
        Assert.NotEqual(Environment.ProcessId, await pid.Invoke(0).Within());
        Assert.Equal(["htex"], dfk.ExecutorLabels);
    }

    [Fact]
    public async Task Records_travel_as_arguments_and_results()
    {
        await using var dfk = await LoadHtexAsync();
        var summarise = dfk.App<Sample, Summary>(Summarise);
        var rename = dfk.App((Summary s, string suffix) => s with { Name = s.Name + suffix });
        var summary = await rename.Invoke(summarise.Invoke(new Sample("abc", 4, [1.0, 2.0, 3.0, 6.0])), "!").Within();
        Assert.Equal("ABC!", summary.Name);
        Assert.Equal(3.0, summary.Mean);
        Assert.NotEqual(Environment.ProcessId, summary.WorkerProcess);
    }

    [Fact]
    public async Task A_shell_app_runs_its_command_on_a_worker()
    {
        await using var dfk = await LoadHtexAsync();
        var dir = TempRunDir();
        var output = Path.Combine(dir, "out.txt");
        var echo = dfk.ShellApp((string word, int n) => $"for i in $(seq {n}); do echo {word}; done",
            new ShellAppOptions { Stdout = StreamTarget.Truncate(output) });
        Assert.Equal(0, await echo.Invoke("hello", 3).Within());
        Assert.Equal(["hello", "hello", "hello"], File.ReadAllLines(output));

        var exit = dfk.ShellApp(() => "exit 3");
        var failure = Assert.IsType<BashExitFailure>(await FailureOf(exit.Invoke()));
        Assert.Equal(3, failure.ExitCode);
    }

    [Fact]
    public async Task An_exception_comes_back_as_RemoteException_with_its_type_name()
    {
        await using var dfk = await LoadHtexAsync();
        var fail = dfk.App<string, int>(Fail);
        var e = Assert.IsType<RemoteException>(await FailureOf(fail.Invoke("no")));
        Assert.Equal("System.InvalidOperationException", e.TypeName);
        Assert.Contains("refused: no", e.Message);
        Assert.Contains(nameof(Fail), e.RemoteStackTrace);
    }

    [Fact]
    public async Task An_unserializable_argument_fails_that_task_only()
    {
        await using var dfk = await LoadHtexAsync();
        var length = dfk.App((Stream s) => s.Length);
        var add = dfk.App((int a, int b) => a + b);
        var path = Path.Combine(TempRunDir(), "data");
        File.WriteAllText(path, "12345");
        await using var stream = File.OpenRead(path);
        Assert.IsType<SerializationError>(await FailureOf(length.Invoke(stream)));
        Assert.Equal(5, await add.Invoke(2, 3).Within());
    }

    [Fact]
    public async Task Without_encryption_a_manager_on_TCP_still_proves_the_secret_and_a_result_over_MaxMessageSize_fails_its_task_only()
    {
        await using var dfk = await LoadHtexAsync(o =>
        {
            o.Encrypted = false;
            o.SameHostSocket = false;
            o.MaxMessageSize = 65536;
        });
        var bytes = dfk.App((int n) => new byte[n]);
        var e = Assert.IsType<SerializationError>(await FailureOf(bytes.Invoke(200_000)));
        Assert.Contains("MaxMessageSize", e.Message);
        Assert.Equal(1000, (await bytes.Invoke(1000).Within()).Length);
        // The secret a manager proves, private to the user; no CURVE server key without encryption.
        var key = Assert.Single(Directory.GetFiles(dfk.RunDir, "client.key", SearchOption.AllDirectories));
        if (!OperatingSystem.IsWindows())
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(key));
        Assert.Empty(Directory.GetFiles(dfk.RunDir, "server.key", SearchOption.AllDirectories));
    }

    /// <summary>x => x + 1, compiled in memory as a script's functions are.</summary>
    private static Func<int, int> EmittedIncrement()
    {
        var assembly = System.Reflection.Emit.AssemblyBuilder.DefineDynamicAssembly(
            new System.Reflection.AssemblyName("InMemory" + Guid.NewGuid().ToString("N")), System.Reflection.Emit.AssemblyBuilderAccess.Run);
        var type = assembly.DefineDynamicModule("m").DefineType("Script", System.Reflection.TypeAttributes.Public);
        var method = type.DefineMethod("Increment", System.Reflection.MethodAttributes.Public | System.Reflection.MethodAttributes.Static,
            typeof(int), [typeof(int)]);
        var il = method.GetILGenerator();
        il.Emit(System.Reflection.Emit.OpCodes.Ldarg_0);
        il.Emit(System.Reflection.Emit.OpCodes.Ldc_I4_1);
        il.Emit(System.Reflection.Emit.OpCodes.Add);
        il.Emit(System.Reflection.Emit.OpCodes.Ret);
        return type.CreateType().GetMethod("Increment")!.CreateDelegate<Func<int, int>>();
    }

    [Fact]
    public async Task A_function_compiled_in_memory_fails_its_task_naming_the_fix_and_runs_on_threads()
    {
        await using var dfk = await LoadAsync(o =>
        {
            o.Executors.Add(Fast());
            o.Executors.Add(new ThreadPoolExecutorOptions { Label = "local" });
        });
        var increment = EmittedIncrement();
        var onHtex = dfk.App(increment, new FunctionAppOptions { Name = "increment", Executors = { "htex" } });
        var e = Assert.IsType<SerializationError>(await FailureOf(onHtex.Invoke(1)));
        Assert.Contains("app increment cannot run on HighThroughputExecutor 'htex'", e.Message);
        Assert.Contains("define the function in a compiled project", e.Message);
        Assert.Contains("or run this app on a ThreadPoolExecutor", e.Message);
        var onThreads = dfk.App(increment, new FunctionAppOptions { Executors = { "local" } });
        Assert.Equal(2, await onThreads.Invoke(1).Within());
        // A shell app's command is built here, whatever compiled it.
        var shell = dfk.ShellApp((int x) => $"exit {increment(x)}", new ShellAppOptions { Executors = { "htex" } });
        Assert.Equal(3, Assert.IsType<BashExitFailure>(await FailureOf(shell.Invoke(2))).ExitCode);
    }

    [Fact]
    public async Task Defaults_are_the_FSharp_defaults()
    {
        var cs = new HighThroughputExecutorOptions();
        var fs = HtexOptionsModule.defaults();
        Assert.Equal(fs.Label, cs.Label);
        Assert.Equal(fs.Address, cs.Address);
        Assert.Null(cs.WorkerPort);
        Assert.Equal(fs.WorkerPortRange.Item1, cs.WorkerPortRangeStart);
        Assert.Equal(fs.WorkerPortRange.Item2, cs.WorkerPortRangeEnd);
        Assert.Null(cs.MaxWorkersPerNode);
        Assert.Equal(fs.CoresPerWorker, cs.CoresPerWorker);
        Assert.Null(cs.MemPerWorker);
        Assert.Equal(fs.PrefetchCapacity, cs.PrefetchCapacity);
        Assert.Equal(fs.HeartbeatPeriod, cs.HeartbeatPeriod);
        Assert.Equal(fs.HeartbeatThreshold, cs.HeartbeatThreshold);
        Assert.Null(cs.DrainPeriod);
        Assert.Equal(fs.PollPeriod, cs.PollPeriod);
        Assert.Equal(fs.Encrypted, cs.Encrypted);
        Assert.Equal(fs.SameHostSocket, cs.SameHostSocket);
        Assert.Equal(fs.AllowUnauthenticatedManagers, cs.AllowUnauthenticatedManagers);
        Assert.False(cs.AllowUnauthenticatedManagers);
        Assert.Equal(fs.MaxMessageSize, cs.MaxMessageSize);
        Assert.True(fs.ManagerSelector.IsRandomSelector);
        Assert.Equal(ManagerSelection.Random, cs.ManagerSelector);
        Assert.Empty(cs.AvailableAccelerators);
        Assert.Equal(fs.CpuAffinity, cs.CpuAffinity);
        Assert.True(fs.BlockErrorHandler.IsSimple);
        Assert.True(cs.BlockErrorHandler);
        Assert.Null(cs.BlockErrorWindow);
        Assert.True(fs.Strategy.IsSimple);
        Assert.Equal(ScalingStrategy.Simple, cs.Strategy);
        Assert.Equal(fs.StrategyPeriod, cs.StrategyPeriod);
        Assert.Equal(fs.MaxIdleTime, cs.MaxIdleTime);
        Assert.Null(cs.WorkerCommand);

        var local = Assert.IsType<LocalProviderOptions>(cs.Provider);
        var core = Parsl.Providers.LocalProvider.Defaults;
        Assert.Equal(core.InitBlocks, local.InitBlocks);
        Assert.Equal(core.MinBlocks, local.MinBlocks);
        Assert.Equal(core.MaxBlocks, local.MaxBlocks);
        Assert.Equal(core.NodesPerBlock, local.NodesPerBlock);
        Assert.Equal(core.Parallelism, local.Parallelism);
        Assert.Equal(core.WorkerInit, local.WorkerInit);
        Assert.Equal(core.StatusPollingInterval, local.StatusPollingInterval);

        // And they load: the worker executable is found next to the tests.
        await using var dfk = await LoadAsync(o => o.Executors.Add(new HighThroughputExecutorOptions()));
        Assert.Equal(["HighThroughputExecutor"], dfk.ExecutorLabels);
    }

    public static TheoryData<string, Action<HighThroughputExecutorOptions>> BadOptions => new()
    {
        { "HighThroughputExecutorOptions.MaxWorkersPerNode", o => o.MaxWorkersPerNode = 0 },
        { "HighThroughputExecutorOptions.CoresPerWorker", o => o.CoresPerWorker = -1 },
        { "HighThroughputExecutorOptions.WorkerPortRangeStart", o => (o.WorkerPortRangeStart, o.WorkerPortRangeEnd) = (600, 500) },
        { "HighThroughputExecutorOptions.WorkerPort", o => o.WorkerPort = 70000 },
        { "HighThroughputExecutorOptions.HeartbeatThreshold", o => o.HeartbeatThreshold = TimeSpan.FromSeconds(1) },
        { "HighThroughputExecutorOptions.CpuAffinity", o => o.CpuAffinity = "sideways" },
        { "HighThroughputExecutorOptions.Strategy", o => o.Strategy = (ScalingStrategy)7 },
        { "HighThroughputExecutorOptions.ManagerSelector", o => o.ManagerSelector = (ManagerSelection)7 },
        { "HighThroughputExecutorOptions.WorkerCommand", o => o.WorkerCommand = [] },
        { "HighThroughputExecutorOptions.MaxMessageSize", o => o.MaxMessageSize = 1000 },
        { "HighThroughputExecutorOptions.Provider", o => o.Provider = null! },
        // Labels are the kernel's concern: it names the list they are in.
        { "DfkOptions.Executors", o => o.Label = " " },
        { "LocalProviderOptions.MaxBlocks", o => o.Provider = new LocalProviderOptions { MinBlocks = 2, MaxBlocks = 1 } },
        { "LocalProviderOptions.NodesPerBlock", o => o.Provider = new LocalProviderOptions { NodesPerBlock = 0 } },
        { "LocalProviderOptions.Parallelism", o => o.Provider = new LocalProviderOptions { Parallelism = 1.5 } },
        { "LocalProviderOptions.InitBlocks", o => o.Provider = new LocalProviderOptions { InitBlocks = -1 } },
    };

    [Theory]
    [MemberData(nameof(BadOptions))]
    public async Task A_bad_option_is_refused_at_load_naming_the_CSharp_property(string field, Action<HighThroughputExecutorOptions> spoil)
    {
        var htex = new HighThroughputExecutorOptions();
        spoil(htex);
        var e = await Assert.ThrowsAsync<ConfigurationError>(() => LoadAsync(o => o.Executors.Add(htex)));
        Assert.Equal(field, e.Field);
        Assert.StartsWith(field + ": ", e.Message);
        Assert.DoesNotContain("or None", e.Message); // C# words: null, not F#'s None
    }

    [Fact]
    public async Task An_explicit_WorkerCommand_starts_the_workers_and_an_empty_one_names_the_fix()
    {
        var e = await Assert.ThrowsAsync<ConfigurationError>(() =>
            LoadAsync(o => o.Executors.Add(new HighThroughputExecutorOptions { WorkerCommand = [] })));
        Assert.Contains("null for the default", e.Message);
        var worker = Path.Combine(AppContext.BaseDirectory, "Parsl.Workers.dll");
        await using var dfk = await LoadHtexAsync(h => h.WorkerCommand = ["dotnet", worker]);
        Assert.Equal(4, await dfk.App((int x) => x + 1).Invoke(3).Within());
    }
}
