using static Parsl.CSharp.Tests.TestKernel;

namespace Parsl.CSharp.Tests;

public class AppTests
{
    private static int Add(int a, int b) => a + b;
    private static string Join6(int a, string b, double c, bool d, char e, long f) => $"{a}{b}{c}{d}{e}{f}";

    [Fact]
    public async Task A_future_passed_as_an_argument_is_a_dependency()
    {
        await using var dfk = await LoadAsync();
        var square = dfk.App((int x) => x * x);
        AppFuture<int> a = square.Invoke(3);
        AppFuture<int> b = square.Invoke(a);
        Assert.Equal(81, await b.Within());
        Assert.Equal(9, await a);
        Assert.Equal(0, a.TaskId.Value);
        Assert.Equal(1, b.TaskId.Value);
        Assert.Equal(States.ExecDone, b.Status);
        Assert.Equal(2, dfk.FinalCounts[States.ExecDone]);
    }

    [Fact]
    public async Task Apps_of_every_arity_from_lambdas_static_methods_and_method_groups()
    {
        await using var dfk = await LoadAsync();
        var zero = dfk.App(() => 42);
        var one = dfk.App((string s) => s.Length);
        var two = dfk.App<int, int, int>(Add);                     // method group
        var three = dfk.App((int a, int b, int c) => Add(Add(a, b), c)); // static method in a lambda
        var four = dfk.App((int a, int b, int c, int d) => a * b * c * d);
        var five = dfk.App((int a, int b, int c, int d, int e) => a + b + c + d + e);
        var six = dfk.App<int, string, double, bool, char, long, string>(Join6);
        Assert.Equal(42, await zero.Invoke().Within());
        Assert.Equal(5, await one.Invoke("hello").Within());
        Assert.Equal(7, await two.Invoke(3, 4).Within());
        Assert.Equal(6, await three.Invoke(1, 2, 3).Within());
        Assert.Equal(24, await four.Invoke(1, 2, 3, 4).Within());
        Assert.Equal(15, await five.Invoke(1, 2, 3, 4, 5).Within());
        Assert.Equal("1x2.5Truez9", await six.Invoke(1, "x", 2.5, true, 'z', 9L).Within());
        Assert.Equal("Add", two.Name);
        Assert.Equal("app", one.Name);
    }

    [Fact]
    public async Task Local_functions_and_options_name_apps()
    {
        await using var dfk = await LoadAsync();
        static int Double(int x) => 2 * x;
        var doubled = dfk.App<int, int>(Double);
        var named = dfk.App((int x) => x, new FunctionAppOptions { Name = "identity" });
        Assert.Equal("Double", doubled.Name);
        Assert.Equal("identity", named.Name);
        var f = named.Invoke(doubled.Invoke(4));
        Assert.Equal(8, await f.Within());
        Assert.Equal("identity", f.AppName);
    }

    [Fact]
    public async Task Tasks_and_futures_convert_to_arguments_and_Arg_Of_covers_the_rest()
    {
        await using var dfk = await LoadAsync();
        var add = dfk.App((int a, int b) => a + b);
        var external = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        var sum = add.Invoke(external.Task, add.Invoke(1, 2));
        Assert.False(sum.IsCompleted);
        external.SetResult(10);
        Assert.Equal(13, await sum.Within());

        // In a generic method C# cannot convert T to Arg<T> through the implicit operators of Arg<T>.
        static AppFuture<T> Echo<T>(Dfk dfk, T value) => dfk.App((T x) => x).Invoke(Arg.Of(value));
        Assert.Equal("echo", await Echo(dfk, "echo").Within());
        var three = add.Invoke(Arg.Of(1), Arg.Of(Task.FromResult(2)));
        Assert.Equal(6, await add.Invoke(Arg.Of(three), 3).Within());
    }

    [Fact]
    public async Task Arg_All_gathers_futures_into_an_array_argument()
    {
        await using var dfk = await LoadAsync();
        var square = dfk.App((int x) => x * x);
        var total = dfk.App((int[] xs) => xs.Sum());
        var squares = Enumerable.Range(1, 10).Select(i => square.Invoke(i)).ToList();
        Assert.Equal(385, await total.Invoke(Arg.All(squares)).Within());
        Assert.Equal(5, await total.Invoke(Arg.All(square.Invoke(1), square.Invoke(2))).Within());
    }

    [Fact]
    public async Task Async_bodies_are_awaited_by_the_executor()
    {
        await using var dfk = await LoadAsync();
        var slowIncrement = dfk.App(async (int x) =>
        {
            await Task.Yield();
            return x + 1;
        });
        var withToken = dfk.App(async (int x, CancellationToken ct) =>
        {
            await Task.Yield();
            ct.ThrowIfCancellationRequested();
            return x * 10;
        });
        Assert.Equal(20, await withToken.Invoke(slowIncrement.Invoke(1)).Within());
    }

    [Fact]
    public async Task Cancelling_the_call_token_stops_a_running_task()
    {
        await using var dfk = await LoadAsync();
        var started = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var waitForever = dfk.App(async (int x, CancellationToken ct) =>
        {
            started.SetResult();
            await Task.Delay(Timeout.Infinite, ct);   // only cancellation ends it
            return x;
        });
        using var cts = new CancellationTokenSource();
        var f = waitForever.Invoke(1, cts.Token);
        await started.Task.WaitAsync(Limit);
        cts.Cancel();
        var e = await FailureOf(f);
        Assert.IsAssignableFrom<OperationCanceledException>(e);
        Assert.Equal(States.Failed, f.Status);
    }

    [Fact]
    public async Task Cancelling_the_call_token_of_a_pending_task_fails_its_dependents()
    {
        await using var dfk = await LoadAsync();
        var inc = dfk.App((int x) => x + 1);
        var never = new TaskCompletionSource<int>();
        using var cts = new CancellationTokenSource();
        var pending = inc.Invoke(never.Task, cts.Token);
        var dependent = inc.Invoke(pending);
        cts.Cancel();
        Assert.IsAssignableFrom<OperationCanceledException>(await FailureOf(pending));
        var e = Assert.IsType<DependencyError>(await FailureOf(dependent));
        Assert.Contains(pending.TaskId, e.Dependencies);
        Assert.Equal(States.DepFail, dependent.Status);
    }

    [Fact]
    public async Task A_failed_dependency_gives_DependencyError_with_the_root_cause()
    {
        await using var dfk = await LoadAsync();
        var fail = dfk.App((int x) => x > 0 ? throw new InvalidOperationException("bad input") : x);
        var inc = dfk.App((int x) => x + 1);
        var failed = fail.Invoke(1);
        var e = Assert.IsType<DependencyError>(await FailureOf(inc.Invoke(inc.Invoke(failed))));
        Assert.IsType<InvalidOperationException>(e.InnerException);
        Assert.Equal("bad input", e.InnerException!.Message);
        Assert.IsType<InvalidOperationException>(await FailureOf(failed));
    }

    [Fact]
    public async Task Retries_and_the_retry_handler_follow_the_options()
    {
        var seen = new List<int>();
        await using var dfk = await LoadAsync(o =>
        {
            o.Retries = 2;
            o.RetryHandler = (e, info) => { lock (seen) seen.Add(info.Try); return 1.0; };
        });
        var attempts = 0;
        var flaky = dfk.App((int x) => Interlocked.Increment(ref attempts) < 3 ? throw new IOException("flaky") : x);
        Assert.Equal(5, await flaky.Invoke(5).Within());
        Assert.Equal(3, attempts);
        Assert.Equal(new[] { 0, 1 }, seen);
    }

    [Fact]
    public async Task Join_apps_complete_with_the_futures_their_bodies_return()
    {
        await using var dfk = await LoadAsync();
        var square = dfk.App((int x) => x * x);
        var add = dfk.App((int a, int b) => a + b);
        var sumOfSquares = dfk.JoinApp((int a, int b) => add.Invoke(square.Invoke(a), square.Invoke(b)));
        var asyncJoin = dfk.JoinApp(async (int n) =>
        {
            var total = 0;
            for (var i = 1; i <= n; i++) total += await square.Invoke(i);
            return total;
        });
        var fanOut = dfk.JoinApp((int n) => Enumerable.Range(1, n).Select(i => square.Invoke(i)));
        var j = sumOfSquares.Invoke(3, 4);
        Assert.Equal(25, await j.Within());
        Assert.Equal(States.ExecDone, j.Status);
        Assert.Equal(14, await asyncJoin.Invoke(3).Within());
        Assert.Equal(new[] { 1, 4, 9 }, await fanOut.Invoke(3).Within());
    }

    [Fact]
    public async Task An_awaiting_async_join_body_holds_no_thread()
    {
        // One internal thread, twenty join bodies: all must be waiting at once for any of them to finish.
        await using var dfk = await LoadAsync(o => o.InternalTasksMaxThreads = 1);
        var release = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        using var started = new CountdownEvent(20);
        var join = dfk.JoinApp(async (int i) =>
        {
            started.Signal();
            return await release.Task + i;
        });
        var futures = Enumerable.Range(0, 20).Select(i => join.Invoke(i)).ToList();
        Assert.True(started.Wait(Limit), "every body started while none could finish");
        Assert.All(futures, f => Assert.False(f.IsCompleted));
        release.SetResult(100);
        Assert.Equal(Enumerable.Range(100, 20), await Task.WhenAll(futures.Select(f => f.Within())));
        Assert.All(futures, f => Assert.Equal(States.ExecDone, f.Status));
    }

    [Fact]
    public void Stream_targets_say_what_they_do_and_refuse_blank_paths()
    {
        StreamTarget plain = "out.txt";
        Assert.Equal("append to out.txt", plain.Description);
        Assert.Equal("truncate err.txt", StreamTarget.Truncate("err.txt").Description);
        Assert.Equal("automatic file name", StreamTarget.Auto.ToString());
        Assert.Throws<ArgumentException>(() => StreamTarget.Append(" "));
        Assert.Throws<ArgumentNullException>(() => StreamTarget.Truncate(null!));
    }

    [Fact]
    public async Task A_failure_inside_a_join_is_a_JoinError()
    {
        await using var dfk = await LoadAsync();
        var fail = dfk.App((int x) => x > 0 ? throw new ArithmeticException("overflow") : x);
        var join = dfk.JoinApp((int x) => fail.Invoke(x));
        var asyncJoin = dfk.JoinApp(async (int x) => await fail.Invoke(x) + 1);
        var e = Assert.IsType<JoinError>(await FailureOf(join.Invoke(1)));
        Assert.IsType<ArithmeticException>(e.InnerException);
        Assert.Single(e.FailedTasks);
        var e2 = Assert.IsType<JoinError>(await FailureOf(asyncJoin.Invoke(1)));
        Assert.Equal("overflow", e2.InnerException!.Message);
    }

    [Fact]
    public async Task Shell_apps_return_zero_or_fail_with_the_exit_code()
    {
        await using var dfk = await LoadAsync();
        var exitWith = dfk.ShellApp((int code) => $"exit {code}");
        var touch = dfk.ShellApp((string dir, string name) => $"touch '{dir}/{name}'",
            new ShellAppOptions { Name = "touch" });
        var dir = TempRunDir();
        Assert.Equal(0, await touch.Invoke(dir, "made").Within());
        Assert.True(File.Exists(Path.Combine(dir, "made")));
        var e = Assert.IsType<BashExitFailure>(await FailureOf(exitWith.Invoke(3)));
        Assert.Equal(3, e.ExitCode);
        Assert.Equal("touch", touch.Name);
    }

    [Fact]
    public async Task Resource_specifications_are_checked_by_the_executor()
    {
        await using var dfk = await LoadAsync();
        var app = dfk.App((int x) => x, new FunctionAppOptions { Resources = { ["cores"] = 2 } });
        var e = Assert.IsType<InvalidResourceSpecification>(await FailureOf(app.Invoke(1)));
        Assert.Contains("cores", e.InvalidKeys);
    }

    [Fact]
    public async Task With_changes_options_for_the_calls_made_through_the_copy()
    {
        await using var dfk = await LoadAsync(o => o.Executors.Add(new ThreadPoolExecutorOptions { Label = "only" }));
        var identity = dfk.App((int x) => x, new FunctionAppOptions { Name = "identity" });
        var renamed = identity.With(new FunctionAppOptions { Name = "renamed" });
        var withResources = identity.With(new FunctionAppOptions { Resources = { ["cores"] = 1 } });
        Assert.Equal("renamed", renamed.Name);
        Assert.Equal("identity", identity.Name);
        Assert.Equal("renamed", renamed.Invoke(1).AppName);
        Assert.IsType<InvalidResourceSpecification>(await FailureOf(withResources.Invoke(1)));
        Assert.Equal(2, await identity.Invoke(2).Within()); // the original keeps its options
        Assert.Throws<ConfigurationError>(() => identity.With(new FunctionAppOptions { Executors = { "missing" } }));
        Assert.Throws<ArgumentNullException>(() => identity.With(null!));
        var shell = dfk.ShellApp((int code) => $"exit {code}").With(new ShellAppOptions { Name = "exit_code" });
        Assert.Equal("exit_code", Assert.IsType<BashExitFailure>(await FailureOf(shell.Invoke(4))).AppName);
    }

    [Fact]
    public async Task Apps_run_on_the_executors_their_options_name()
    {
        await using var dfk = await LoadAsync(o =>
        {
            o.Executors.Add(new ThreadPoolExecutorOptions { Label = "a", MaxThreads = 1 });
            o.Executors.Add(new ThreadPoolExecutorOptions { Label = "b", MaxThreads = 1 });
        });
        Assert.Equal(new[] { "a", "b" }, dfk.ExecutorLabels.OrderBy(l => l));
        var onB = dfk.App((int x) => x, new FunctionAppOptions { Executors = { "b" } });
        Assert.Equal(1, await onB.Invoke(1).Within());
        var error = Assert.Throws<ConfigurationError>(() => dfk.App((int x) => x, new FunctionAppOptions { Executors = { "gpu" } }));
        Assert.Contains("gpu", error.Message);
    }

    [Fact]
    public async Task Shell_streams_walltime_and_outputs_work_end_to_end_through_With()
    {
        await using var dfk = await LoadAsync();
        var dir = TempRunDir();
        var say = dfk.ShellApp((string word) => $"echo {word}; echo oops >&2",
            new ShellAppOptions { Name = "say", Stdout = StreamTarget.Auto, Stderr = StreamTarget.Truncate(Path.Combine(dir, "err.txt")) });
        var f = say.Invoke("hello");
        Assert.Equal(0, await f.Within());
        var autoOut = Path.Combine(dfk.RunDir, "task_logs", "0000", $"task_{f.TaskId.Value:0000}_say.stdout");
        Assert.Equal("hello\n", File.ReadAllText(autoOut));
        var err = File.ReadAllText(Path.Combine(dir, "err.txt"));
        Assert.StartsWith("--> executable follows <--", err);
        Assert.EndsWith("oops\n", err);

        var make = dfk.ShellApp((string path) => $"touch '{path}'");
        var missing = make.With(new ShellAppOptions { Outputs = { Path.Combine(dir, "never.txt") } });
        Assert.IsType<MissingOutputs>(await FailureOf(missing.Invoke(Path.Combine(dir, "other.txt"))));
        var made = make.With(new ShellAppOptions { Outputs = { Path.Combine(dir, "made.txt") } });
        Assert.Equal(0, await made.Invoke(Path.Combine(dir, "made.txt")).Within());

        var sleep = dfk.ShellApp((int seconds) => $"sleep {seconds}").With(new ShellAppOptions { Walltime = TimeSpan.FromMilliseconds(500) });
        Assert.IsType<AppTimeout>(await FailureOf(sleep.Invoke(60)));
    }

    [Fact]
    public async Task Cached_apps_return_earlier_results_without_running_again()
    {
        await using var dfk = await LoadAsync();
        var runs = 0;
        var slow = dfk.App((int x, string note) => { Interlocked.Increment(ref runs); return x * 2; },
            new FunctionAppOptions { Cache = true, IgnoreForCache = { "note" } });
        Assert.Equal(42, await slow.Invoke(21, "first").Within());
        var again = slow.Invoke(21, "a different note");
        Assert.Equal(42, await again.Within());
        Assert.Equal(States.MemoDone, again.Status);
        Assert.Equal(1, runs);
        Assert.Equal(44, await slow.Invoke(22, "first").Within());
        Assert.Equal(2, runs);
    }
}
