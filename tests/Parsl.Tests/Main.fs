module Parsl.Tests.Main

open Expecto

let all =
    testList "Parsl" [
        KernelTests.tests
        KernelProperties.tests
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
        HtexStagingTests.tests
        ProvidersLauncherTests.tests
        ProvidersSlurmTests.tests
        HtexSlurmTests.tests
        ProvidersSshTests.tests
        ProvidersErrorHandlerTests.tests
        ProvidersGridEngineTests.tests
        ProvidersBatchSamplesTests.tests
        ProvidersKubernetesTests.tests
        EndpointTests.tests
    ]

[<EntryPoint>]
let main argv =
    match argv with
    // A child process for the memo-key stability test: prints the key of fixed arguments.
    | [| "--memo-key" |] ->
        printfn "%s" (MemoTests.sampleKey false)
        0
    // A client process for the endpoint tests (killed with -9 mid-run).
    | args when args.Length > 0 && args[0] = "--endpoint-client" -> EndpointTests.clientMain args[1..]
    | _ ->
        let code = runTestsWithCLIArgs [] argv all
        // The broker the endpoint tests started (if they ran) stops with the run, by its pid.
        EndpointTests.stopBroker ()
        code
