//! Secrets the service models do not mark `sensitive`, by operation. Each
//! entry names where the fact comes from. Selectors are over the JSON view
//! the gateway gives policies (see the README's selector language).

use veil_policy_sdk::MaskStyle::{self, Hash, Redact};

/// Curated selectors for `service:action`.
pub fn selectors(service: &str, action: &str) -> &'static [(&'static str, MaskStyle)] {
    match (service, action) {
        // STS returns session credentials; the model marks only the secret key
        // (sts-2011-06-15 Credentials.SecretAccessKey is `sensitive`), but the
        // session token is just as much a credential. Key ids are hashed so
        // analysts can correlate them with CloudTrail.
        ("sts", "AssumeRole" | "AssumeRoleWithSAML" | "AssumeRoleWithWebIdentity" | "GetSessionToken" | "GetFederationToken" | "AssumeRoot") => {
            &[("Credentials.SessionToken", Redact), ("Credentials.SecretAccessKey", Redact), ("Credentials.AccessKeyId", Hash)]
        }
        // ECR: the authorization token is a base64 docker login password (ecr API reference, GetAuthorizationToken).
        ("ecr", "GetAuthorizationToken") => &[("authorizationData[*].authorizationToken", Redact)],
        ("ecr-public", "GetAuthorizationToken") => &[("authorizationData.authorizationToken", Redact)],
        // EC2 user data routinely carries bootstrap secrets (EC2 user guide, "instance user data").
        ("ec2", "DescribeInstanceAttribute") => &[("userData.value", Redact)],
        ("ec2", "DescribeLaunchTemplateVersions") => &[("launchTemplateVersionSet.item[*].launchTemplateData.userData", Redact)],
        ("ec2", "GetLaunchTemplateData") => &[("launchTemplateData.userData", Redact)],
        // Lambda environment variables hold credentials by common practice (Lambda developer guide, "environment variables").
        ("lambda", "GetFunction") => &[("Configuration.Environment.Variables.*", Redact)],
        ("lambda", "GetFunctionConfiguration" | "UpdateFunctionConfiguration" | "CreateFunction") => &[("Environment.Variables.*", Redact)],
        ("lambda", "ListFunctions") => &[("Functions[*].Environment.Variables.*", Redact)],
        // CodeBuild: PLAINTEXT environment variables and webhook secrets (codebuild API, EnvironmentVariable, Webhook.secret).
        ("codebuild", "BatchGetProjects") => &[
            ("projects[*].environment.environmentVariables[*].value", Redact),
            ("projects[*].webhook.secret", Redact),
        ],
        ("codebuild", "BatchGetBuilds") => &[("builds[*].environment.environmentVariables[*].value", Redact)],
        ("codebuild", "CreateWebhook" | "UpdateWebhook") => &[("webhook.secret", Redact)],
        ("codebuild", "CreateProject" | "UpdateProject") => &[("project.environment.environmentVariables[*].value", Redact)],
        // Glue connection properties include PASSWORD for JDBC connections (glue API, ConnectionPropertyKey).
        ("glue", "GetConnection") => &[
            ("Connection.ConnectionProperties.PASSWORD", Redact),
            ("Connection.ConnectionProperties.ENCRYPTED_PASSWORD", Redact),
        ],
        ("glue", "GetConnections") => &[
            ("ConnectionList[*].ConnectionProperties.PASSWORD", Redact),
            ("ConnectionList[*].ConnectionProperties.ENCRYPTED_PASSWORD", Redact),
        ],
        // API Gateway API key values (apigateway API, ApiKey.value; returned with includeValue).
        ("apigateway", "GetApiKey" | "CreateApiKey" | "UpdateApiKey") => &[("value", Redact)],
        ("apigateway", "GetApiKeys") => &[("items[*].value", Redact)],
        // Amplify app/branch environment variables and basic-auth credentials (amplify API, App).
        ("amplify", "GetApp" | "CreateApp" | "UpdateApp") => &[("app.environmentVariables.*", Redact), ("app.basicAuthCredentials", Redact)],
        ("amplify", "ListApps") => &[("apps[*].environmentVariables.*", Redact), ("apps[*].basicAuthCredentials", Redact)],
        ("amplify", "GetBranch" | "CreateBranch" | "UpdateBranch") => &[("branch.environmentVariables.*", Redact), ("branch.basicAuthCredentials", Redact)],
        // Batch container environment (batch API, KeyValuePair in ContainerProperties.environment).
        ("batch", "DescribeJobDefinitions") => &[("jobDefinitions[*].containerProperties.environment[*].value", Redact)],
        ("batch", "DescribeJobs") => &[("jobs[*].container.environment[*].value", Redact)],
        // SageMaker container and job environments (sagemaker API, Environment maps).
        ("sagemaker", "DescribeModel") => &[("PrimaryContainer.Environment.*", Redact), ("Containers[*].Environment.*", Redact)],
        ("sagemaker", "DescribeTrainingJob" | "DescribeProcessingJob" | "DescribeTransformJob") => &[("Environment.*", Redact)],
        // ECS task definition environment values (ecs API, ContainerDefinition.environment).
        ("ecs", "DescribeTaskDefinition" | "RegisterTaskDefinition" | "DeregisterTaskDefinition") => {
            &[("taskDefinition.containerDefinitions[*].environment[*].value", Redact)]
        }
        // IAM: new access keys and service-specific credentials (iam API; the password is
        // model-sensitive, the user name pair is not secret). Key ids are hashed.
        ("iam", "CreateAccessKey") => &[("AccessKey.SecretAccessKey", Redact), ("AccessKey.AccessKeyId", Hash)],
        ("iam", "CreateServiceSpecificCredential" | "ResetServiceSpecificCredential") => {
            &[("ServiceSpecificCredential.ServicePassword", Redact)]
        }
        // Secrets Manager values (secretsmanager API, GetSecretValue; the model marks them too).
        ("secretsmanager", "GetSecretValue") => &[("SecretString", Redact), ("SecretBinary", Redact)],
        ("secretsmanager", "BatchGetSecretValue") => &[("SecretValues[*].SecretString", Redact), ("SecretValues[*].SecretBinary", Redact)],
        // KMS plaintext outputs (kms API, Decrypt/GenerateDataKey/GenerateRandom Plaintext).
        ("kms", "Decrypt" | "GenerateDataKey" | "GenerateDataKeyPair" | "GenerateRandom" | "DeriveSharedSecret") => {
            &[("Plaintext", Redact), ("PrivateKeyPlaintext", Redact), ("SharedSecret", Redact)]
        }
        // Cognito user pool tokens (cognito-idp API, AuthenticationResultType).
        ("cognito-idp", "InitiateAuth" | "AdminInitiateAuth" | "RespondToAuthChallenge" | "AdminRespondToAuthChallenge") => &[
            ("AuthenticationResult.AccessToken", Redact),
            ("AuthenticationResult.IdToken", Redact),
            ("AuthenticationResult.RefreshToken", Redact),
        ],
        _ => &[],
    }
}

/// SSM parameter values are secret only when their type is SecureString
/// (ssm API, Parameter.Type): these operations are masked per item by type
/// instead of by the model's blanket `sensitive` trait.
pub fn ssm_items(service: &str, action: &str) -> Option<&'static str> {
    match (service, action) {
        ("ssm", "GetParameter") => Some("Parameter"),
        ("ssm", "GetParameters" | "GetParametersByPath" | "GetParameterHistory") => Some("Parameters"),
        _ => None,
    }
}
