namespace Parsl.Executors.WorkerLink

open System
open System.IO
open Parsl
open Parsl.Providers

/// The option checks the Work Queue and TaskVine executors share (the same fields, the same rules). Each takes
/// `f`, which names a field (`"WorkQueueExecutor.Port"`), and returns the problems in field order.
[<RequireQualifiedAccess>]
module WorkerOptionRules =
    /// The `dotnet` that runs this process when it is one, else `dotnet` on the workers' PATH.
    let defaultDotnet () =
        match Environment.ProcessPath with
        | p when not (isNull p) && Path.GetFileNameWithoutExtension p = "dotnet" -> p
        | _ -> "dotnet"

    /// Label, where workers connect, the password file, and how blocks of workers are started.
    let manager
        (f: string -> string)
        (defaultLabel: string)
        (defaultWorker: string)
        (label: string)
        (address: string)
        (port: int)
        (passwordFile: string option)
        (provider: IExecutionProvider option)
        (strategyPeriod: TimeSpan)
        (maxIdleTime: TimeSpan)
        (workerExecutable: string)
        (workerOptions: string list)
        : ConfigurationError list =
        [ if String.IsNullOrWhiteSpace label then ConfigurationError(f "Label", sprintf "is empty; the default is \"%s\"" defaultLabel)
          if String.IsNullOrWhiteSpace address then ConfigurationError(f "Address", "is empty; the default is \"127.0.0.1\"")
          if port < 0 || port > 65535 then ConfigurationError(f "Port", sprintf "%d is not a port; give 1-65535, or 0 for any free port" port)
          match passwordFile with
          | Some p when String.IsNullOrWhiteSpace p || not (File.Exists p) ->
              ConfigurationError(f "PasswordFile", sprintf "'%s' does not exist; give the path of the file workers are given with --password" p)
          | Some p when FileInfo(p).Length = 0L -> ConfigurationError(f "PasswordFile", sprintf "'%s' is empty; write the password into it" p)
          | _ -> ()
          match provider with
          | Some p when isNull (box p) -> ConfigurationError(f "Provider", "is Some null; give a provider or None")
          | Some p -> yield! p.Validate()
          | None -> ()
          if strategyPeriod <= TimeSpan.Zero then ConfigurationError(f "StrategyPeriod", "must be positive; the default is 5 s")
          if maxIdleTime < TimeSpan.Zero then ConfigurationError(f "MaxIdleTime", "must be 0 or more; the default is 120 s")
          if String.IsNullOrWhiteSpace workerExecutable then
              ConfigurationError(f "WorkerExecutable", sprintf "is empty; the default is \"%s\"" defaultWorker)
          if isNull (box workerOptions) || workerOptions |> List.exists isNull then
              ConfigurationError(f "WorkerOptions", "contains null; give words like [\"--cores\"; \"2\"]") ]

    /// What every task gets (init command, environment), retries, and the keepalive.
    let tasks
        (f: string -> string)
        (initCommand: string)
        (env: Map<string, string>)
        (maxRetries: int)
        (keepalivePeriod: TimeSpan)
        (keepaliveTimeout: TimeSpan)
        : ConfigurationError list =
        [ if isNull initCommand then ConfigurationError(f "InitCommand", "is null; use \"\" for none")
          for KeyValue(k, v) in env do
              if String.IsNullOrEmpty k || k.Contains '=' || k.Contains '\n' then
                  ConfigurationError(f "Env", sprintf "'%s' is not a variable name (no '=', no newline, not empty)" k)
              if isNull v || v.Contains '\n' then ConfigurationError(f "Env", sprintf "the value of %s is null or has a newline" k)
          if maxRetries < 1 then ConfigurationError(f "MaxRetries", sprintf "must be at least 1 (got %d); 1 leaves retries to Config.Retries" maxRetries)
          if keepalivePeriod <= TimeSpan.Zero then ConfigurationError(f "KeepalivePeriod", "must be positive; the default is 30 s")
          if keepaliveTimeout <= keepalivePeriod then
              ConfigurationError(
                  f "KeepaliveTimeout",
                  sprintf "(%O) must be longer than KeepalivePeriod (%O), or idle workers would be dropped" keepaliveTimeout keepalivePeriod) ]

    /// The .NET task runner the workers start.
    let runner (f: string -> string) (dotnetCommand: string) (runnerDirectory: string) : ConfigurationError list =
        [ if String.IsNullOrWhiteSpace dotnetCommand then ConfigurationError(f "DotnetCommand", "is empty; the default is \"dotnet\"")
          if String.IsNullOrWhiteSpace runnerDirectory || not (File.Exists(Path.Combine(runnerDirectory, "Parsl.Workers.dll"))) then
              ConfigurationError(
                  f "RunnerDirectory",
                  sprintf "Parsl.Workers.dll is not in '%s'; reference the Parsl.Workers project or package, or point RunnerDirectory at its folder" runnerDirectory) ]
