module Parsl.Tests.Main

open Expecto

let all =
    testList "Parsl" [
        KernelTests.tests
        KernelProperties.tests
        MailboxTests.tests
        InlineOwnerTests.tests
        OwnedMailboxTests.tests
        LocalLinkTests.tests
        ThreadPoolExecutorTests.tests
        ShellTests.tests
        DeepResolverTests.tests
        AppTests.tests
        WorkflowTests.tests
        FilesTests.tests
        MemoTests.tests
        CheckpointTests.tests
        MemoizationTests.tests
        StagingTests.tests
        HtexPolicyTests.tests
        HtexTests.tests
        WorkerCliTests.tests
        HtexStagingTests.tests
        HtexSecurityTests.tests
        HtexFaultTests.tests
        NodeAssemblyTests.tests
        LayoutTests.tests
        ReadySetTests.tests
        HtexScaleTests.tests
        ProvidersLauncherTests.tests
        ProvidersSlurmTests.tests
        HtexSlurmTests.tests
        ProvidersSshTests.tests
        ProvidersErrorHandlerTests.tests
        ProvidersGridEngineTests.tests
        ProvidersBatchSamplesTests.tests
        ProvidersKubernetesTests.tests
        WorkerLinkTests.tests
        WorkQueueTests.tests
        TaskVineTests.tests
        MonitoringTests.tests
        EndpointTests.tests
        MpiTests.tests
    ]

[<EntryPoint>]
let main argv =
    match argv with
    // A child process for the memo-key stability test: prints the key of fixed arguments.
    | [| "--memo-key" |] ->
        printfn "%s" (MemoTests.sampleKey false)
        0
    // A child process for the SIGTERM test: an HTEx running a shell app, waiting to be signalled.
    | [| "--signal-child"; runBase |] -> HtexFaultTests.signalChild runBase
    // A child process for the monitoring crash test: killed while a task runs.
    | [| "--monitoring-child"; baseDir |] -> MonitoringTests.crashChild baseDir
    // A client process for the endpoint tests (killed with -9 mid-run).
    | args when args.Length > 0 && args[0] = "--endpoint-client" -> EndpointTests.clientMain args[1..]
    | _ ->
        let code = runTestsWithCLIArgs [] argv all
        // The broker the endpoint tests started (if they ran) stops with the run, by its pid.
        EndpointTests.stopBroker ()
        code
