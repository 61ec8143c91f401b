using System.Diagnostics;
using static Parsl.CSharp.Tests.TestKernel;

namespace Parsl.CSharp.Tests;

/// <summary>A private RabbitMQ broker (tests/harness/rabbitmq.sh, its own directory so it never meets the F# tests'
/// broker) for the endpoint tests, stopped by its pid through the harness when they end.</summary>
public sealed class BrokerFixture : IDisposable
{
    private readonly string script;
    private readonly string dir = Path.Combine(Path.GetTempPath(), "parsl-harness-csharp", "rabbitmq");
    private readonly Dictionary<string, string> fields = new();

    public BrokerFixture()
    {
        var d = new DirectoryInfo(AppContext.BaseDirectory);
        while (d is not null && !File.Exists(Path.Combine(d.FullName, "tests", "harness", "rabbitmq.sh"))) d = d.Parent;
        script = d is null ? throw new InvalidOperationException("tests/harness/rabbitmq.sh not found above the test binary")
                           : Path.Combine(d.FullName, "tests", "harness", "rabbitmq.sh");
        var (code, output, error) = Run(script);
        if (code != 0)
            throw new InvalidOperationException($"the RabbitMQ harness could not start a broker (exit {code}; it needs root on Debian to install rabbitmq-server): {error}");
        foreach (var word in output.Trim().Split(' ').Skip(1))
        {
            var i = word.IndexOf('=');
            fields[word[..i]] = word[(i + 1)..];
        }
    }

    private (int, string, string) Run(params string[] args)
    {
        var psi = new ProcessStartInfo("/bin/bash") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["PARSL_RABBITMQ_DIR"] = dir;
        using var p = Process.Start(psi)!;
        var output = p.StandardOutput.ReadToEndAsync();
        var error = p.StandardError.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, output.Result, error);
    }

    public string this[string key] => fields[key];

    public void Dispose() => Run(script, "stop");
}

/// <summary>The endpoint executor from C#: a real broker, a real <c>parsl-endpoint</c> process, loopback.</summary>
public sealed class EndpointTests : IClassFixture<BrokerFixture>
{
    private readonly BrokerFixture broker;
    private readonly string token = "csharp-token-" + Guid.NewGuid().ToString("N");

    public EndpointTests(BrokerFixture broker) => this.broker = broker;

    private static int Triple(int x) => x * 3;

    /// <summary>Writes an endpoint's config (a thread pool whose size a client may choose) and starts its daemon.</summary>
    private Process StartEndpoint(out string name)
    {
        name = "cs-" + Guid.NewGuid().ToString("N")[..10];
        var home = TempRunDir();
        Directory.CreateDirectory(Path.Combine(home, name));
        File.WriteAllText(Path.Combine(home, name, "config.json"), $$"""
            {
              "name": "{{name}}",
              "broker": { "host": "127.0.0.1", "port": {{broker["port"]}}, "virtualHost": "{{broker["vhost"]}}",
                          "user": "endpoint", "password": "{{broker["endpoint_password"]}}" },
              "tokens": [ "{{token}}" ],
              "engine": { "type": "ThreadPool", "maxThreads": "PLACEHOLDER" },
              "template": { "max_threads": { "default": "2", "pattern": "[1-8]" } }
            }
            """.Replace("PLACEHOLDER", "{{max_threads}}"));
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true };
        // --stop-on-stdin-close: the daemon ends with this test process, however it ends.
        foreach (var a in new[] { Path.Combine(AppContext.BaseDirectory, "Parsl.Endpoint.dll"), "--home", home, "start", name, "--stop-on-stdin-close" })
            psi.ArgumentList.Add(a);
        var p = Process.Start(psi)!;
        var line = p.StandardOutput.ReadLineAsync();
        if (!line.Wait(TimeSpan.FromSeconds(120)) || line.Result is null || !line.Result.StartsWith("READY"))
        {
            p.Kill(true);
            throw new Xunit.Sdk.XunitException("the endpoint did not start: " + p.StandardError.ReadToEnd());
        }
        return p;
    }

    private EndpointExecutorOptions Client(string name) => new()
    {
        Endpoint = name,
        BrokerPort = int.Parse(broker["port"]),
        VirtualHost = broker["vhost"],
        BrokerUser = "client",
        BrokerPassword = broker["client_password"],
        Token = token,
    };

    [Fact]
    public async Task Options_are_checked_when_the_kernel_loads_naming_the_field()
    {
        var e = await Assert.ThrowsAsync<ConfigurationError>(() =>
            LoadAsync(o => o.Executors.Add(new EndpointExecutorOptions { Endpoint = "not a name", BrokerUser = "u", Token = "t" })));
        Assert.Equal("EndpointExecutorOptions.Endpoint", e.Field);
    }

    [Fact]
    public async Task BrokerLostTimeout_reaches_the_executor_and_a_zero_one_is_refused_naming_the_field()
    {
        var options = new EndpointExecutorOptions { Endpoint = "ep", BrokerUser = "u", Token = "t", BrokerLostTimeout = TimeSpan.FromSeconds(7) };
        Assert.Equal(TimeSpan.FromSeconds(7), options.ToCore().BrokerLostTimeout);
        Assert.Equal(TimeSpan.FromSeconds(120), new EndpointExecutorOptions().BrokerLostTimeout);
        var e = await Assert.ThrowsAsync<ConfigurationError>(() =>
            LoadAsync(o => o.Executors.Add(new EndpointExecutorOptions { Endpoint = "ep", BrokerUser = "u", Token = "t", BrokerLostTimeout = TimeSpan.Zero })));
        Assert.Equal("EndpointExecutorOptions.BrokerLostTimeout", e.Field);
    }

    [Fact]
    public async Task Function_and_shell_apps_run_through_an_endpoint_and_UserEndpointConfig_is_checked()
    {
        using var endpoint = StartEndpoint(out var name);
        try
        {
            var options = Client(name);
            options.UserEndpointConfig["max_threads"] = "3";
            await using var dfk = await LoadAsync(o => o.Executors.Add(options));
            var triple = dfk.App<int, int>(Triple);
            Assert.Equal(42, await triple.Invoke(14).Within());
            var offset = 100;
            var add = dfk.App((int x) => x + offset);
            Assert.Equal(105, await add.Invoke(5).Within());

            var file = Path.Combine(TempRunDir(), "out");
            var echo = dfk.ShellApp((string s) => $"echo {s} > {file}");
            Assert.Equal(0, await echo.Invoke("from-the-endpoint").Within());
            Assert.Equal("from-the-endpoint", File.ReadAllText(file).Trim());

            var refusedOptions = new FunctionAppOptions();
            refusedOptions.Resources["user_endpoint_config"] = new Dictionary<string, string> { ["partition"] = "debug" };
            var refused = dfk.App((int x) => x).With(refusedOptions);
            var error = await FailureOf(refused.Invoke(1));
            var config = Assert.IsType<Parsl.Executors.Endpoint.UserEndpointConfigRefused>(error);
            Assert.Contains("'partition' is not allowed", config.Message);
        }
        finally
        {
            endpoint.Kill(true);
        }
    }
}
