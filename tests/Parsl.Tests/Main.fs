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
        WorkerCliTests.tests
        HtexStagingTests.tests
        HtexSecurityTests.tests
        HtexFaultTests.tests
        ProvidersLauncherTests.tests
        ProvidersSlurmTests.tests
        HtexSlurmTests.tests
        ProvidersSshTests.tests
        ProvidersErrorHandlerTests.tests
        ProvidersGridEngineTests.tests
        ProvidersBatchSamplesTests.tests
        ProvidersKubernetesTests.tests
        WorkQueueTests.tests
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
    | _ -> runTestsWithCLIArgs [] argv all
