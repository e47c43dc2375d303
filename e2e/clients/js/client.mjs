// An unmodified AWS SDK for JavaScript v3 workload for the end-to-end tests. The S3 client is built
// without credentials or region, so both come from the SDK's default Node.js chains (in a pod with no
// credentials: the instance metadata service, or the container endpoint when
// AWS_CONTAINER_CREDENTIALS_FULL_URI is set). It prints one line per step, as e2e/clients/gov2 does:
//
//	creds <source> <access key id>        source: imds, http (container endpoint) or what $source says
//	get ok | get denied <code> | get error <message>
//	put ok | put denied <code> | put error <message>
//
// With --region it prints "region <name>" as the client resolved it (with AWS_REGION unset, the SDK
// reads placement/region from IMDS over IMDSv2) and stops.
//
// Usage: node client.mjs [--endpoint URL] [--bucket NAME] [--region]
// Its packages come from hack/install-stack.sh (npm ci of package-lock.json, outside the repo).
import { GetObjectCommand, PutObjectCommand, S3Client } from "@aws-sdk/client-s3";

function parseArgs(argv) {
  const args = { endpoint: undefined, bucket: "", region: false };
  for (let i = 0; i < argv.length; i++) {
    switch (argv[i]) {
      case "--endpoint":
        args.endpoint = argv[++i];
        break;
      case "--bucket":
        args.bucket = argv[++i];
        break;
      case "--region":
        args.region = true;
        break;
      default:
        throw new Error(`unknown argument ${argv[i]}`);
    }
  }
  return args;
}

// The default chain says which provider answered only in its debug log (and, for some providers, in
// $source); the logger is how a workload sees it without choosing the provider itself.
const seen = [];
const logger = {
  debug: (...m) => seen.push(m.join(" ")),
  info: () => {},
  warn: (...m) => console.error(...m),
  error: (...m) => console.error(...m),
};

function source(creds) {
  const features = Object.keys(creds.$source ?? {});
  if (features.includes("CREDENTIALS_HTTP")) return "http";
  if (features.includes("CREDENTIALS_IMDS") || seen.some((l) => l.includes("fromInstanceMetadata"))) return "imds";
  return features.join("+") || "unknown";
}

async function report(op, call) {
  try {
    await call();
    console.log(op, "ok");
  } catch (e) {
    if (e.$metadata !== undefined && e.name) {
      console.log(op, "denied", e.Code ?? e.name);
    } else {
      console.log(op, "error", String(e.message ?? e).replaceAll("\n", " "));
    }
  }
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const s3 = new S3Client({ endpoint: args.endpoint, forcePathStyle: true, logger });
  if (args.region) {
    console.log("region", await s3.config.region());
    return;
  }
  const creds = await s3.config.credentials();
  console.log("creds", source(creds), creds.accessKeyId);
  if (!args.bucket) return;
  await report("get", async () => {
    const out = await s3.send(new GetObjectCommand({ Bucket: args.bucket, Key: "seed" }));
    await out.Body.transformToString();
  });
  await report("put", () => s3.send(new PutObjectCommand({ Bucket: args.bucket, Key: "js", Body: "hello" })));
}

main().catch((e) => {
  console.error("js:", e?.message ?? e);
  process.exit(1);
});
