using System.IO.Compression;
using ParslFile = Parsl.Data.File;
using static Parsl.CSharp.Tests.TestKernel;

namespace Parsl.CSharp.Tests;

/// <summary>Files, data futures, outputs, a file as a shell app's stdout, and staging providers from C#.</summary>
public class FilesTests
{
    private static string MemberText(string archive, string member)
    {
        using var zip = ZipFile.OpenRead(archive);
        using var reader = new StreamReader(zip.GetEntry(member)!.Open());
        return reader.ReadToEnd();
    }

    [Fact]
    public async Task An_output_file_becomes_a_DataFuture_another_app_depends_on()
    {
        await using var dfk = await LoadAsync();
        var dir = TempRunDir();
        var write = dfk.App((string text, ParslFile output) => { File.WriteAllText(output.Filepath, text); return text.Length; });
        var read = dfk.App((ParslFile input) => File.ReadAllText(input.Filepath));
        var w = write.Invoke("hello", Arg.Output(ParslFile.Of(Path.Combine(dir, "hello.txt"))));
        var data = Assert.Single(w.Outputs);
        Assert.Equal(w.TaskId, data.TaskId);
        Assert.Equal("hello.txt", data.FileName);
        Assert.Equal("hello", await read.Invoke(Arg.Data(data)).Within());
        Assert.Equal(5, await w.Within());
        var count = dfk.App((ParslFile[] fs) => fs.Length);
        Assert.Equal(2, await count.Invoke(Arg.Files([data, data])).Within());
        Assert.Equal("file", ParslFile.Of(Path.Combine(dir, "hello.txt")).Scheme);
    }

    [Theory]
    [InlineData(StagingPlacement.SeparateTask)]
    [InlineData(StagingPlacement.InTask)]
    public async Task Zip_members_are_staged_out_and_in_by_the_configured_provider(StagingPlacement placement)
    {
        await using var dfk = await LoadAsync(o =>
        {
            o.Staging.Add(StagingProviderOptions.NoOpFile);
            o.Staging.Add(StagingProviderOptions.Zip(placement));
        });
        var archive = Path.Combine(TempRunDir(), "results.zip");
        var write = dfk.App((string text, ParslFile output) => { File.WriteAllText(output.Filepath, text); return 0; });
        var read = dfk.App((ParslFile input) => File.ReadAllText(input.Filepath));
        var w = write.Invoke("in the archive", Arg.Output(ParslFile.Of($"zip:{archive}/dir/a.txt")));
        Assert.Equal("in the archive", await read.Invoke(Arg.Data(w.Outputs[0])).Within());
        Assert.Equal("in the archive", MemberText(archive, "dir/a.txt"));
        Assert.Equal("in the archive", await read.Invoke(Arg.File(ParslFile.Of($"zip:{archive}/dir/a.txt"))).Within());
    }

    [Fact]
    public async Task A_File_as_a_shell_apps_stdout_is_staged_like_an_output()
    {
        await using var dfk = await LoadAsync();
        var archive = Path.Combine(TempRunDir(), "logs.zip");
        var echo = dfk.ShellApp((int n) => $"echo line {n}",
            new ShellAppOptions { Stdout = StreamTarget.File(ParslFile.Of($"zip:{archive}/task/out.txt")) });
        var r = echo.Invoke(7);
        Assert.Equal(0, await r.Within());
        Assert.NotNull(r.Stdout);
        Assert.Null(r.Stderr);
        var file = await r.Stdout!.Task.WaitAsync(Limit);
        Assert.Equal($"zip:{archive}/task/out.txt", file.Url);
        Assert.Equal("line 7\n", MemberText(archive, "task/out.txt"));
        var read = dfk.App((ParslFile input) => File.ReadAllText(input.Filepath));
        Assert.Equal("line 7\n", await read.Invoke(Arg.Data(r.Stdout)).Within());
    }

    [Fact]
    public async Task A_missing_input_fails_that_task_with_StagingError_naming_the_URL()
    {
        await using var dfk = await LoadAsync();
        var read = dfk.App((ParslFile input) => File.ReadAllText(input.Filepath));
        var url = $"zip:{Path.Combine(TempRunDir(), "none.zip")}/x.txt";
        var e = await FailureOf(read.Invoke(Arg.File(ParslFile.Of(url))));
        var staging = e as Parsl.Data.StagingError ?? (e.InnerException as Parsl.Data.StagingError);
        Assert.NotNull(staging);
        Assert.Equal(url, staging!.Url);
    }

    [Fact]
    public async Task A_null_staging_provider_or_bad_placement_is_refused_at_load()
    {
        var e = await Assert.ThrowsAsync<ConfigurationError>(() => LoadAsync(o => o.Staging.Add(null!)));
        Assert.Equal("DfkOptions.Staging", e.Field);
        var p = await Assert.ThrowsAsync<ConfigurationError>(() => LoadAsync(o => o.Staging.Add(new StagingProviderOptions { Scheme = StagingScheme.Http, Placement = (StagingPlacement)5 })));
        Assert.Equal("StagingProviderOptions.Placement", p.Field);
        Assert.Throws<ArgumentNullException>(() => Arg.Data(null!));
        Assert.Throws<ArgumentNullException>(() => StreamTarget.File(null!));
    }
}

/// <summary>Staging over real sockets and processes: HTTP from a loopback server, and in-task zip staging on the
/// HighThroughputExecutor's worker processes.</summary>
public class StagingTests
{
    /// <summary>A loopback HTTP server answering every GET with its path, for the life of the test.</summary>
    private sealed class Server : IAsyncDisposable
    {
        private readonly System.Net.HttpListener listener = new();
        private readonly Task loop;

        public Server()
        {
            for (var attempt = 0; ; attempt++)
            {
                var port = Random.Shared.Next(20000, 40000);
                listener.Prefixes.Clear();
                listener.Prefixes.Add($"http://127.0.0.1:{port}/");
                try { listener.Start(); Url = $"http://127.0.0.1:{port}"; break; }
                catch (System.Net.HttpListenerException) when (attempt < 20) { }
            }
            loop = Task.Run(async () =>
            {
                while (listener.IsListening)
                {
                    System.Net.HttpListenerContext context;
                    try { context = await listener.GetContextAsync(); }
                    catch (Exception) when (!listener.IsListening) { return; }
                    var found = context.Request.Url!.AbsolutePath != "/missing.csv";
                    context.Response.StatusCode = found ? 200 : 404;
                    var body = System.Text.Encoding.UTF8.GetBytes(found ? "served " + context.Request.Url.AbsolutePath : "no");
                    await context.Response.OutputStream.WriteAsync(body);
                    context.Response.Close();
                }
            });
        }

        public string Url { get; } = "";

        public async ValueTask DisposeAsync()
        {
            listener.Stop();
            listener.Close();
            await loop;
        }
    }

    [Theory]
    [InlineData(StagingPlacement.SeparateTask)]
    [InlineData(StagingPlacement.InTask)]
    public async Task An_http_input_is_downloaded_before_the_app_runs_and_a_404_is_a_StagingError(StagingPlacement placement)
    {
        await using var server = new Server();
        await using var dfk = await LoadAsync(o =>
        {
            o.Staging.Add(StagingProviderOptions.NoOpFile);
            o.Staging.Add(StagingProviderOptions.Http(placement));
        });
        var read = dfk.App((ParslFile input) => File.ReadAllText(input.Filepath));
        Assert.Equal("served /data/x.csv", await read.Invoke(Arg.File(ParslFile.Of(server.Url + "/data/x.csv"))).Within());
        var e = await FailureOf(read.Invoke(Arg.File(ParslFile.Of(server.Url + "/missing.csv"))));
        var staging = e as Parsl.Data.StagingError ?? e.InnerException as Parsl.Data.StagingError;
        Assert.NotNull(staging);
        Assert.EndsWith("/missing.csv", staging!.Url);
    }

    private static int WriteText(string text, ParslFile output)
    {
        File.WriteAllText(output.Filepath, text);
        return Environment.ProcessId;
    }

    private static string ReadText(ParslFile input) => File.ReadAllText(input.Filepath);

    [Fact]
    public async Task In_task_zip_staging_runs_on_the_HighThroughputExecutors_workers()
    {
        await using var dfk = await LoadAsync(o =>
        {
            o.Staging.Add(StagingProviderOptions.NoOpFile);
            o.Staging.Add(StagingProviderOptions.Zip(StagingPlacement.InTask));
            o.Executors.Add(new HighThroughputExecutorOptions
            {
                Label = "htex", MaxWorkersPerNode = 1, StrategyPeriod = TimeSpan.FromMilliseconds(200),
                Provider = new LocalProviderOptions { StatusPollingInterval = TimeSpan.FromMilliseconds(200) },
            });
        });
        var archive = Path.Combine(TempRunDir(), "remote.zip");
        var write = dfk.App<string, ParslFile, int>(WriteText);
        var read = dfk.App<ParslFile, string>(ReadText);
        var w = write.Invoke("from a worker", Arg.Output(ParslFile.Of($"zip:{archive}/w.txt")));
        Assert.Equal("from a worker", await read.Invoke(Arg.Data(w.Outputs[0])).Within());
        Assert.NotEqual(Environment.ProcessId, await w.Within());
        using var zip = ZipFile.OpenRead(archive);
        Assert.NotNull(zip.GetEntry("w.txt"));
    }
}
